"""OPC UA node ids as an integrator writes them, parsed without touching the network.

Accepted forms (OPC UA Part 6, 5.3.1.10 string notation):

- ``ns=<index>;s=<string>``, ``ns=<index>;i=<number>``, ``ns=<index>;g=<guid>``, ``ns=<index>;b=<base64>``
- ``nsu=<namespace uri>;s=...`` (and ``;i=``, ``;g=``, ``;b=``): the index is looked up in the server's
  NamespaceArray at connect, so the config survives a server that reorders its namespaces
- ``i=<number>``, ``s=...``, ``g=...``, ``b=...`` without a prefix: namespace 0
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Literal

IdKind = Literal["s", "i", "g", "b"]

ACCEPTED_FORMS = (
    "ns=<index>;s=<string>, ns=<index>;i=<number>, ns=<index>;g=<guid>, ns=<index>;b=<base64>, "
    "nsu=<namespace uri>;s=<string> (or ;i= ;g= ;b=), i=<number> (namespace 0)"
)

_NODE_RE = re.compile(r"^(?:ns=(?P<ns>[^;]*);|nsu=(?P<nsu>[^;]*);)?(?P<kind>[sigb])=(?P<ident>.*)$", re.DOTALL)

_UINT16_MAX = 0xFFFF
_UINT32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed node id. ``namespace`` is an index, or a URI still to be resolved at connect."""

    namespace: int | str
    kind: IdKind
    identifier: str | int | uuid.UUID | bytes

    @property
    def needs_resolution(self) -> bool:
        """True for the ``nsu=`` form: the namespace index comes from the server."""
        return isinstance(self.namespace, str)


def parse_node_id(text: str) -> NodeRef:
    """Parse ``text`` into a :class:`NodeRef`; ``ValueError`` names the accepted forms when it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"a node id must be a string; accepted forms: {ACCEPTED_FORMS}")
    m = _NODE_RE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not an OPC UA node id; accepted forms: {ACCEPTED_FORMS}")
    namespace = _namespace(text, m.group("ns"), m.group("nsu"))
    kind: IdKind = m.group("kind")  # type: ignore[assignment]
    return NodeRef(namespace, kind, _identifier(text, kind, m.group("ident")))


def _namespace(text: str, ns: str | None, nsu: str | None) -> int | str:
    if nsu is not None:
        if not nsu.strip():
            raise ValueError(f"{text!r}: nsu= needs a namespace URI, e.g. nsu=urn:acme:oven;s=Oven1.DoorOpen")
        return nsu
    if ns is None:
        return 0
    if not ns.isdigit() or int(ns) > _UINT16_MAX:
        raise ValueError(f"{text!r}: the namespace index after ns= must be a number from 0 to {_UINT16_MAX}")
    return int(ns)


def _identifier(text: str, kind: IdKind, ident: str) -> str | int | uuid.UUID | bytes:
    if kind == "s":
        if not ident:
            raise ValueError(f"{text!r}: the string identifier after s= is empty")
        return ident
    if kind == "i":
        if not ident.isdigit() or int(ident) > _UINT32_MAX:
            raise ValueError(f"{text!r}: the numeric identifier after i= must be a number from 0 to {_UINT32_MAX}")
        return int(ident)
    if kind == "g":
        try:
            return uuid.UUID(ident)
        except ValueError:
            raise ValueError(
                f"{text!r}: the identifier after g= must be a GUID like 09087e75-8e5e-499b-954f-f2a9603db28a"
            ) from None
    try:
        data = base64.b64decode(ident, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text!r}: the identifier after b= must be base64, e.g. b=M/RbKBsRVkePCePcx24oRA==") from None
    if not data:
        raise ValueError(f"{text!r}: the opaque identifier after b= is empty")
    return data
