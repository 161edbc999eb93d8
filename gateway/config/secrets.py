"""Keeping secrets out of config error messages.

A key is secret when its name contains ``password``, ``passwd``, ``passphrase``, ``secret``, ``token`` or
``key`` as a word end (``key``, ``key_file``, ``user_private_key``, ``apikey``; not ``keepalive``). Its value,
and everything below it, is never shown in a message, whatever its type (string, number, list) and
however it was written (literal, ``${ENV}``, ``${file:...}``, an alias, or an alias typo that breaks the
YAML). The loader does two things with this module:

- at a secret location, messages do not echo the input (:func:`is_secret_path`);
- every message of every error is passed through :func:`redact` with all secret texts of the file, so a
  secret reused through an alias elsewhere, or quoted by a validator, is replaced by ``***`` too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_SECRET_KEY = re.compile(r"password|passwd|passphrase|secret|token|key(?![a-z])", re.IGNORECASE)
#: ``key: value`` in a YAML line, block or flow style (used only when the YAML cannot be parsed)
_KEY = re.compile(r"""(?:^|[\s{,\-])["']?([A-Za-z_][\w.\-]*)["']?[ \t]*:(?=[ \t])""")
_ANCHOR = re.compile(r"^&[^\s,\[\]{}]+\s*")
SHOWN = "***"


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (see the module docstring)."""
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def is_secret_path(parts: Sequence[Any]) -> bool:
    """Whether a location in the document (``("mqtt", "password")``) is, or is inside, a secret key's value."""
    return any(is_secret_key(p) for p in parts)


def texts_of(value: Any) -> set[str]:
    """The ways a secret value can appear in a message: ``str()`` of every scalar in it, and a float's text."""
    out: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif v is not None and not isinstance(v, bool):
            out.add(str(v))
            text = getattr(v, "text", None)
            if isinstance(text, str):
                out.add(text)
    return {t for t in out if t}


_REFERENCE = re.compile(r"(?<!\$)\$\{[^}]*\}")


def literal_parts(text: str) -> set[str]:
    """The parts of a secret's text written literally: not its ``${VAR}`` / ``${file:...}`` references,
    which name where the secret comes from and are shown in messages."""
    return {p for p in _REFERENCE.split(text) if p}


def texts_in_yaml(text: str) -> set[str]:
    """Secret values as written in YAML source lines, for a file that cannot be parsed.

    Each ``secret_key: value`` yields the rest of the line and the value up to a flow delimiter, without
    quotes, anchor (``&a``) or alias star (``*Hunter2Secret`` gives ``Hunter2Secret``).
    """
    found: set[str] = set()
    for line in text.splitlines():
        for m in _KEY.finditer(line):
            if not is_secret_key(m.group(1)):
                continue
            raw = line[m.end() :].strip()
            for candidate in (raw, re.split(r"[,}\]]", raw, maxsplit=1)[0], raw.split(" #", 1)[0]):
                v = _ANCHOR.sub("", candidate.strip()).lstrip("*").strip().strip("'\"")
                found |= literal_parts(v)
    return found


def redact(message: str, secrets: Iterable[str]) -> str:
    """``message`` with every secret text replaced by ``***`` (texts shorter than 3 characters only where
    they are quoted, so that a one-letter secret does not garble the words)."""
    for value in sorted(set(secrets), key=len, reverse=True):
        for form in (repr(value), f'"{value}"'):
            message = message.replace(form, f"'{SHOWN}'")
        if len(value) >= 3:
            message = message.replace(value, SHOWN)
    return message
