"""The plain data of a config file read with libyaml, for the files that need nothing ruamel alone can do.

:func:`plain_data` gives what the loader's round-trip path gives (``dict``, ``list``, ``str`` with ``${...}``
substituted, ``int``, :class:`~gateway.config.loader.YamlFloat`, ``bool``, ``None``) for the YAML that
plant configs are made of: mappings with string keys, lists, plain and quoted scalars, YAML 1.2 resolution
(``on``/``no`` are strings, ``1:20`` is a string). It builds the data straight from libyaml's parse events
(PyYAML's C parser), so no node tree, positions or comment objects exist (the figures for a 10 000-tag file
are in docs/performance.md, "Issue 12.2").

It returns ``None`` — read the file on the round-trip path, which is the reference and the only one that
reports errors — for anything else: a YAML or substitution error, a duplicate key, anchors and aliases, merge
keys, tags, directives, folded scalars, non-string keys, integers other than plain decimals, floats with
``_``, ``.inf``/``.nan``, timestamps, tabs, several documents, a top level that is not a mapping, nesting
deeper than :data:`~gateway.config.bounds.MAX_DEPTH`. A file that validates on this path needs no error lines; one that
does not is read again with positions, so errors keep their file, line and field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.bounds import MAX_DEPTH
from gateway.config.substitution import SubstitutionError, substitute
from gateway.config.yamlfloat import YamlFloat

try:  # PyYAML built with libyaml (its wheels are); without it every file takes the round-trip path
    from yaml import YAMLError
    from yaml.cyaml import CParser
    from yaml.events import (
        DocumentEndEvent,
        DocumentStartEvent,
        MappingEndEvent,
        MappingStartEvent,
        ScalarEvent,
        SequenceEndEvent,
        SequenceStartEvent,
        StreamEndEvent,
        StreamStartEvent,
    )
except ImportError:  # pragma: no cover - a PyYAML without its C extension
    CParser = None

# YAML 1.2 implicit types of plain scalars, as ruamel.yaml resolves them (its 1.2 resolver; the tests compare
# both on many texts). Only plain decimal integers and plain floats are built here; every other number form
# and timestamps go to the round-trip path.
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_FLOAT = re.compile(
    r"""[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                       |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                       |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
                       |[-+]?\.(?:inf|Inf|INF)
                       |\.(?:nan|NaN|NAN)""",
    re.X,
)
_INT = re.compile(r"[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?[0-9_]+|[-+]?0x[0-9a-fA-F_]+")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
_TIMESTAMP_START = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}")  # a superset of what resolves as a timestamp


#: Characters libyaml and ruamel.yaml read differently: a tab outside quotes (libyaml takes it as a separator,
#: ruamel refuses it), and NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR (line breaks in YAML 1.1, not in 1.2)
_READ_DIFFERENTLY = re.compile("[\t\x85\u2028\u2029]")


class _RoundTrip(Exception):
    """This file needs the round-trip path."""


def plain_data(text: str, env: Mapping[str, str], base: Path) -> Any:
    """The file's data as the round-trip path would give it, or ``None`` when that path must read it."""
    if CParser is None or _READ_DIFFERENTLY.search(text) is not None:
        return None
    parser = CParser(text)
    try:
        return _build(parser, env, base)
    except (_RoundTrip, YAMLError, SubstitutionError):
        return None
    finally:
        parser.dispose()


def _scalar(event: Any, env: Mapping[str, str], base: Path, strings: _Strings) -> Any:
    _check_node(event)
    value: str = event.value
    if event.style:  # quoted or block: a string
        if event.style == ">":  # folded: ruamel keeps fold positions; not worth a second reading here
            raise _RoundTrip
        return strings[_substituted(value, env, base)]
    if value in _NULL:
        return None
    if value in _BOOL:
        return _BOOL[value]
    first = value[0]
    if first in "-+0123456789.":
        if _FLOAT.fullmatch(value):
            if "_" in value or value[-1] in "fFnN":  # underscores, .inf, .nan
                raise _RoundTrip
            return YamlFloat(float(value), strings[value])
        if _INT.fullmatch(value):
            if _DECIMAL.fullmatch(value) is None:
                raise _RoundTrip
            return int(value)
        if _TIMESTAMP_START.match(value):
            raise _RoundTrip
    elif value in ("<<", "="):  # merge key, value key
        raise _RoundTrip
    return strings[_substituted(value, env, base)]


def _substituted(text: str, env: Mapping[str, str], base: Path) -> str:
    result = substitute(text, env, base)
    return text if result is None else result.value


class _Strings(dict[str, str]):
    """One ``str`` object per distinct text of a file: a type, unit or address written on 10 000 tags is kept
    (in the validated models too) once, not once per tag."""

    def __missing__(self, text: str) -> str:
        self[text] = text
        return text


def _build(parser: Any, env: Mapping[str, str], base: Path) -> Any:
    event = parser.get_event()
    if not isinstance(event, StreamStartEvent):
        raise _RoundTrip
    event = parser.get_event()
    if not isinstance(event, DocumentStartEvent) or event.version is not None or event.tags:
        raise _RoundTrip
    event = parser.get_event()
    if not isinstance(event, MappingStartEvent):  # empty, or not a mapping at the top: the loader says so
        raise _RoundTrip
    root: dict[str, Any] = {}
    # each open collection: (container, pending key of a mapping or None for a list)
    stack: list[list[Any]] = []
    current: Any = root
    key: Any = None  # the mapping key waiting for its value (None: the next scalar is a key)
    strings = _Strings()
    _check_node(event)
    while True:
        event = parser.get_event()
        if isinstance(event, (MappingEndEvent, SequenceEndEvent)):
            if not stack:
                break
            parent, parent_key = stack.pop()
            if isinstance(parent, dict):
                parent[parent_key] = current
                key = None
            else:
                parent.append(current)
            current = parent
            continue
        if isinstance(current, dict) and key is None:  # a key
            if not isinstance(event, ScalarEvent):
                raise _RoundTrip  # a complex key, an alias
            _check_node(event)
            key = strings[event.value]
            if not event.style:
                if key in _NULL or key in _BOOL or (key and key[0] in "-+0123456789.<="):
                    raise _RoundTrip  # a key that is not (certainly) a string
            if key in current:
                raise _RoundTrip  # a duplicate key: reported, with both lines, on the round-trip path
            continue
        if isinstance(event, ScalarEvent):
            value = _scalar(event, env, base, strings)
        elif isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            _check_node(event)
            if len(stack) + 3 > MAX_DEPTH:  # the root, the open ones, this one, a scalar in it
                raise _RoundTrip
            stack.append([current, key])
            current = {} if isinstance(event, MappingStartEvent) else []
            key = None
            continue
        else:  # an alias
            raise _RoundTrip
        if isinstance(current, dict):
            current[key] = value
            key = None
        else:
            current.append(value)
    if not isinstance(parser.get_event(), DocumentEndEvent) or not isinstance(parser.get_event(), StreamEndEvent):
        raise _RoundTrip  # several documents: the round-trip path refuses them
    return root


def _check_node(event: Any) -> None:
    """Anchors and tags (``&a``, ``!!str``) are the round-trip path's."""
    if event.anchor is not None or event.tag is not None:
        raise _RoundTrip
