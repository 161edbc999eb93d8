"""Substitution of environment variables and secret files in config string values.

Forms (in any string value, anywhere in the string):

- ``${VAR}``: the environment variable ``VAR``; an error when it is not set (set but empty gives ``""``).
- ``${VAR:-default}``: ``default`` when ``VAR`` is unset *or empty*, as in the shell.
- ``${file:/run/secrets/x}``: the content of that file, trailing newlines stripped; a relative path is
  relative to the config file's directory. An error when the file cannot be read or is larger than
  :data:`MAX_SECRET_FILE_BYTES` (so ``${file:/dev/zero}`` cannot exhaust memory).
- ``$${`` is a literal ``${``.

The result is always a string, even when it looks like a number; pydantic converts where a number is
wanted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
FORMS = "${VAR}, ${VAR:-default} or ${file:/path/to/secret}"
#: Largest secret file read by ``${file:...}`` (a password, token or PEM key is a few KiB)
MAX_SECRET_FILE_BYTES = 64 * 1024


class SubstitutionError(ValueError):
    """A ``${...}`` could not be resolved; the message names the variable or file, never a value."""


@dataclass(frozen=True, slots=True)
class Substituted:
    """A string value after substitution. ``sources`` names what was substituted (``${VAR}``,
    ``${file:/path}``), to show in messages instead of the value; empty when only ``$${`` escapes
    were replaced."""

    value: str
    sources: tuple[str, ...]


def substitute(text: str, env: Mapping[str, str], base_dir: Path) -> Substituted | None:
    """Resolve every ``${...}`` in ``text``. ``None`` when ``text`` contains no ``${``.

    Raises :class:`SubstitutionError` naming every unresolvable reference in ``text``.
    """
    if "${" not in text:
        return None
    sources: list[str] = []
    problems: list[str] = []

    def replace(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "$${":
            return "${"
        body = m.group(1)
        if body is None:
            problems.append(f"unclosed '${{' (use {FORMS}; write $${{ for a literal ${{)")
            return token
        if body.startswith("file:"):
            return _read_file(body[5:], base_dir, sources, problems)
        v = _VAR.fullmatch(body)
        if v is None:
            problems.append(f"invalid substitution {token!r}: expected {FORMS}")
            return token
        name, default = v.group(1), v.group(2)
        sources.append(f"${{{name}}}")
        value = env.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            problems.append(f"environment variable {name} is not set (set it, or give a default: ${{{name}:-default}})")
            return token
        return value

    result = _TOKEN.sub(replace, text)
    if problems:
        raise SubstitutionError("; ".join(problems))
    return Substituted(result, tuple(dict.fromkeys(sources)))


def _read_file(name: str, base_dir: Path, sources: list[str], problems: list[str]) -> str:
    ref = f"${{file:{name}}}"
    if not name.strip():
        problems.append(f"{ref}: no file name (e.g. ${{file:/run/secrets/mqtt_password}})")
        return ref
    sources.append(ref)
    path = base_dir / Path(name.strip()).expanduser()
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)  # 64 KiB at most
        if len(data) > MAX_SECRET_FILE_BYTES:
            problems.append(f"{ref}: the file is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB; is it the secret?")
            return ref
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{ref}: the file is not UTF-8 text")
        return ref
    except OSError as e:
        problems.append(f"{ref}: cannot read the file: {e.strerror or e}")
        return ref
    return content.rstrip("\r\n")
