"""OPC UA browse paths as an integrator writes them: ``/Objects/2:Line1/2:Press3/2:Pressure``.

The path starts at the Root folder; each element is a BrowseName ``<namespace index>:<name>`` (index 0
when left out, as for the standard ``Objects`` folder) reached by any hierarchical reference
(Organizes, HasComponent, HasProperty, ...). ``&`` escapes a ``/``, ``:`` or ``&`` inside a name
(``2:Temp&/Humidity``), as in the OPC UA relative path text format (Part 4, A.2).

:func:`parse_browse_path` only checks the syntax; :func:`translate_requests` builds the
TranslateBrowsePathsToNodeIds requests, resolved against the server at connect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncua is heavy; config validation must not need it
    from asyncua import ua

_UINT16_MAX = 0xFFFF
EXAMPLE = "/Objects/2:Line1/2:Press3/2:Pressure"


@dataclass(frozen=True, slots=True)
class BrowsePath:
    """A parsed browse path: the (namespace index, name) of each element below the Root folder."""

    text: str
    elements: tuple[tuple[int, str], ...]

    def to_ua(self) -> ua.BrowsePath:
        """The path as a ``BrowsePath`` starting at the Root folder (i=84)."""
        from asyncua import ua

        path = ua.BrowsePath()
        path.StartingNode = ua.NodeId(ua.ObjectIds.RootFolder, 0)
        for ns, name in self.elements:
            el = ua.RelativePathElement()
            el.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences, 0)
            el.IsInverse = False
            el.IncludeSubtypes = True
            el.TargetName = ua.QualifiedName(name, ns)
            path.RelativePath.Elements.append(el)
        return path


def _split(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for c in chars:
        if c == "&":
            nxt = next(chars, None)
            if nxt is None:
                raise ValueError(f"{text!r}: '&' at the end escapes nothing; write '&&' for a literal '&'")
            current.append("&" + nxt)  # kept escaped until the ns:name split
        elif c == "/":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def _element(text: str, raw: str) -> tuple[int, str]:
    ns_part, name_part, i = "", raw, 0
    while i < len(raw):
        if raw[i] == "&":
            i += 2
            continue
        if raw[i] == ":":
            ns_part, name_part = raw[:i], raw[i + 1 :]
            break
        i += 1
    name = name_part.replace("&/", "/").replace("&:", ":").replace("&&", "&")
    if ns_part == "" and raw.startswith(":"):
        raise ValueError(f"{text!r}: element {raw!r} has an empty namespace index before ':'")
    if ns_part and (not ns_part.isdigit() or int(ns_part) > _UINT16_MAX):
        raise ValueError(
            f"{text!r}: element {raw!r} must be <namespace index>:<browse name>, the index a number "
            f"from 0 to {_UINT16_MAX}, e.g. 2:Pressure"
        )
    if not name:
        raise ValueError(f"{text!r}: element {raw!r} has an empty browse name")
    return (int(ns_part) if ns_part else 0, name)


def parse_browse_path(text: str) -> BrowsePath:
    """Parse ``text``; ``ValueError`` says what is wrong and shows an example."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise ValueError(f"a browse path starts at the Root folder with '/', e.g. {EXAMPLE}")
    raws = _split(text[1:])
    if raws == [""]:
        raise ValueError(f"the browse path names no element, e.g. {EXAMPLE}")
    if any(r == "" for r in raws):
        raise ValueError(f"{text!r} has an empty element ('//' or a trailing '/'), e.g. {EXAMPLE}")
    return BrowsePath(text, tuple(_element(text, r) for r in raws))


def translate_requests(paths: Sequence[BrowsePath], per_request: int) -> list[list[ua.BrowsePath]]:
    """The paths in requests of at most ``per_request`` each (one TranslateBrowsePathsToNodeIds call each)."""
    items = [p.to_ua() for p in paths]
    return [items[i : i + per_request] for i in range(0, len(items), per_request)]
