"""Config errors: every problem found in a config file, each with its file, line and field path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file.

    ``line`` and ``column`` are 1-based (``None`` when the problem has no place in the file, e.g. the file
    is missing). ``path`` is the field path in the document, e.g. ``assets[2].tags[5].type`` (empty for
    problems of the YAML text itself). ``message`` is one line and never contains a substituted secret.
    """

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if not self.path and self.column is not None:
                where += f":{self.column}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used. ``errors`` lists every problem found (all at once, in file order);
    ``str()`` gives one line per problem, ``file:line: path: message``."""

    def __init__(self, errors: Iterable[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
