"""Pydantic's validation messages, rewritten for the integrator who wrote the YAML.

Pydantic speaks of "Input should be a valid dictionary or instance of MqttSection"; an integrator wants to
know which key is unknown, what was expected and what they wrote. Values that came from ``${...}``
substitution are never shown (they may be secrets): the message says where the value came from instead.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from pydantic import BaseModel, Tag
from pydantic.fields import FieldInfo

from gateway.config.common import NAME_PATTERN, NAME_RULE
from gateway.config.cross import CROSS_CHECK

_PREFIXES = ("Value error, ", "Assertion failed, ")
#: Regular expressions of config fields, explained.
PATTERN_RULES = {NAME_PATTERN: NAME_RULE}
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


def model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model whose fields live at ``loc`` (a pydantic error location, union tags included)."""
    found = _walk(root, loc)
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def field_at(root: type[BaseModel], loc: Sequence[int | str]) -> FieldInfo | None:
    """The pydantic field at ``loc`` (its last element must be a field name), if it can be found."""
    if not loc or not isinstance(loc[-1], str):
        return None
    parent = model_at(root, loc[:-1])
    return None if parent is None else _fields(parent).get(loc[-1])


def allowed_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts, in declaration order."""
    return list(_fields(model))


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _unwrap(tp: Any, el: int | str | None) -> tuple[Any, bool]:
    """Strip Annotated/Optional; pick a tagged union member when ``el`` is its tag (then it is consumed)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin is Union or origin is types.UnionType:
            members = [m for m in typing.get_args(tp) if m is not type(None)]
            for m in members:
                tags = [x.tag for x in getattr(m, "__metadata__", ()) if isinstance(x, Tag)]
                if el is not None and el in tags:
                    return typing.get_args(m)[0], True
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, False


def _walk(tp: Any, loc: Sequence[int | str]) -> Any:
    for el in loc:
        tp, consumed = _unwrap(tp, el)
        if consumed:
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = _fields(tp).get(el) if isinstance(el, str) else None
            if field is None:
                return None
            tp = field.annotation
            continue
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (list, tuple, set, frozenset) and isinstance(el, int) and args:
            tp = args[0]
        elif origin is dict and len(args) == 2:
            tp = args[1]
        else:
            return None
    return _unwrap(tp, None)[0]


def describe(value: Any) -> str:
    """How a YAML value is shown in a message: ``'text'``, ``40010.10``, ``an empty value``, ``a list``."""
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = getattr(value, "text", None) if isinstance(value, float) else None  # a YamlFloat: as written
    if text is not None:
        return str(text)
    if isinstance(value, (int, float, str)):
        return repr(value)
    return type(value).__name__


def readable(
    error: dict[str, Any],
    root: type[BaseModel],
    secrets: dict[str, str],
    *,
    secret: bool = False,
) -> str:
    """One line saying what is wrong with the value at ``error["loc"]``.

    ``secrets`` maps each substituted value inside the erroneous value to where it came from
    (``${VAR}``); those values are redacted and the input is not echoed. ``secret``: the location is a
    secret key's value (:mod:`gateway.config.secrets`): the input is never echoed nor matched to choices.
    """
    kind = error["type"]
    msg = str(error["msg"])
    for prefix in _PREFIXES:
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    loc = tuple(error["loc"])
    value = error.get("input")
    show_input = not secret

    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = model_at(root, loc[:-1])
        msg = f"unknown key {key!r}"
        if model is not None:
            allowed = allowed_keys(model)
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                msg += f" — did you mean {close[0]!r}?"
            msg += f" (allowed: {', '.join(allowed)})"
        show_input = False
    elif kind == CROSS_CHECK:
        show_input = False
    elif kind == "missing":
        msg = f"required key {str(loc[-1])!r} is missing" if loc else "required value is missing"
        show_input = False
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "expected a mapping (key: value lines)"
    elif kind == "list_type":
        msg = "expected a list (lines starting with '- ', or [a, b])"
    elif kind in ("literal_error", "enum"):
        options = _QUOTED.findall(str((error.get("ctx") or {}).get("expected", "")))
        msg = f"expected one of: {', '.join(options)}" if options else msg
        if isinstance(value, str) and options and not secrets and not secret:
            close = closest(value, options)
            if close:
                msg += f" — did you mean {close[0]!r}?"
    elif kind == "too_short" and (error.get("ctx") or {}).get("field_type") == "List":
        n = int(error["ctx"].get("min_length", 1))
        msg = f"needs at least {n} entr{'y' if n == 1 else 'ies'}"
    elif kind == "string_pattern_mismatch":
        rule = PATTERN_RULES.get(str((error.get("ctx") or {}).get("pattern", "")))
        if rule is not None:
            msg = rule
        else:
            field = field_at(root, loc)
            if field is not None and field.description:
                msg = f"{msg}: {field.description}"
    elif kind == "string_type" and secret and isinstance(value, (int, float)):
        msg = f"{msg}: a secret is text; quote it (\"...\") so that YAML does not read it as a number"
    msg = " ".join(msg.split())

    if secrets:
        msg = _redact(msg, secrets)
        where = ", ".join(sorted(set(secrets.values())))
        return f"{msg} (value from {where})"
    if show_input and not isinstance(value, (dict, list)) and not _mentions(msg, value):
        msg += f" (got {describe(value)})"
    return msg


def closest(value: str, options: Sequence[str], cutoff: float = 0.6) -> list[str]:
    """The option most like ``value`` (as :func:`difflib.get_close_matches`), ties going to the option listed
    first: ``float`` is nearest to ``float32`` and ``float64`` alike, and the list names float32 first."""
    scores = [(difflib.SequenceMatcher(None, value, o).ratio(), -i, o) for i, o in enumerate(options)]
    best = max(scores, default=(0.0, 0, ""))
    return [best[2]] if best[0] >= cutoff else []


def _mentions(msg: str, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str):
        return repr(value) in msg or f'"{value}"' in msg
    return re.search(rf"(?<![\w.]){re.escape(describe(value))}(?![\w.])", msg) is not None


def _redact(msg: str, secrets: dict[str, str]) -> str:
    for value in sorted(secrets, key=len, reverse=True):
        if not value:
            continue
        for form in (repr(value), f'"{value}"'):
            msg = msg.replace(form, "'***'")
        if len(value) >= 3:
            msg = msg.replace(value, "***")
    return msg
