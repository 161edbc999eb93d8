"""From one received line to tag values: checksum, text decoding, the pattern, typed conversion, scale.

:meth:`LineParser.parse` either returns a :class:`Parsed` line (a full :class:`~gateway.batch.Batch` plus
which tags the line carried) or raises :class:`LineRejected` with a fixed error code and text. The texts
are fixed per code on purpose: the engine logs when the set of error texts changes, so a varying text
(the line itself) would log every bad line; the line is kept in :attr:`LineRejected.detail` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers.serial_line.checksum import ChecksumError, split_checked
from drivers.serial_line.config import SerialLineSource, SerialLineTag
from gateway.batch import Batch

# Error codes in Batch.errors (poll mode replies; value and missing-group errors in both modes).
ERR_NO_MATCH = 1
ERR_CHECKSUM = 2
ERR_DECODE = 3
ERR_OVERLONG = 4
ERR_PARTIAL = 5
ERR_VALUE = 6
ERR_MISSING = 7

ERROR_TEXT = {
    ERR_NO_MATCH: "reply does not match the pattern",
    ERR_CHECKSUM: "reply checksum wrong",
    ERR_DECODE: "reply is not valid text in the configured encoding",
    ERR_OVERLONG: "reply longer than max_line",
    ERR_PARTIAL: "reply incomplete (no terminator before char_timeout)",
    ERR_VALUE: "value text does not convert to the tag's type",
    ERR_MISSING: "group not present in the reply",
}

_COUNTER = {
    ERR_NO_MATCH: "no_match",
    ERR_CHECKSUM: "checksum",
    ERR_DECODE: "decode",
    ERR_OVERLONG: "overlong",
    ERR_PARTIAL: "partial",
}


class LineRejected(Exception):
    """A line (or fragment) that gives no values: ``code`` (``ERR_*``), ``detail`` says what and why."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    @property
    def counter(self) -> str:
        """Name of the :class:`~drivers.serial_line.framing.LineCounters` field this rejection counts in."""
        return _COUNTER[self.code]


@dataclass(slots=True)
class Parsed:
    """A line that matched: every tag's value (plan order) and which tags the line carried."""

    batch: Batch
    present: np.ndarray  # bool per tag: its group took part in the match
    bad_values: int  # tags whose text did not convert (marked bad in ``batch``)


def _number(decimal_comma: bool) -> Callable[[str], float]:
    def convert(text: str) -> float:
        value = float(text.replace(",", ".") if decimal_comma else text)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value

    return convert


def _int(text: str) -> float:
    return float(int(text))


def _bool(truthy: tuple[str, ...], falsy: tuple[str, ...]) -> Callable[[str], float]:
    true_set = {s.lower() for s in truthy}
    false_set = {s.lower() for s in falsy}

    def convert(text: str) -> float:
        key = text.strip().lower()
        if key in true_set:
            return 1.0
        if key in false_set:
            return 0.0
        raise ValueError("neither a true nor a false text")

    return convert


def _converter(tag: SerialLineTag) -> Callable[[str], float] | None:
    """float converter of a tag; None for string tags (kept as text)."""
    if tag.type == "number":
        return _number(tag.decimal_comma)
    if tag.type == "int":
        return _int
    if tag.type == "bool":
        return _bool(tag.truthy, tag.falsy)
    return None


def preview(line: bytes, limit: int = 60) -> str:
    """A short printable form of a line for diagnostics."""
    text = repr(line[:limit])[2:-1]
    return text + ("..." if len(line) > limit else "")


class LineParser:
    """Compiled once per source: turns the bytes of one line (terminator removed) into tag values."""

    def __init__(self, source: SerialLineSource, tags: list[SerialLineTag]) -> None:
        self.regex = source.regex
        self.encoding = source.encoding
        self.checksum = source.checksum
        self.groups = [t.group_name for t in tags]
        self.converters = [_converter(t) for t in tags]
        self.scale = np.array([t.scale for t in tags], dtype=np.float64)
        self.offset = np.array([t.offset for t in tags], dtype=np.float64)

    def parse(self, line: bytes, ts_ns: int) -> Parsed:
        """Values of every tag from ``line``; raises :class:`LineRejected` when the line gives none."""
        data = line
        if self.checksum is not None:
            try:
                data = split_checked(line, self.checksum)
            except ChecksumError as e:
                raise LineRejected(ERR_CHECKSUM, f"{e}: '{preview(line)}'") from None
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise LineRejected(ERR_DECODE, f"byte {e.start} is not {self.encoding}: '{preview(line)}'") from None
        match = self.regex.fullmatch(text)
        if match is None:
            raise LineRejected(ERR_NO_MATCH, f"does not match the pattern: '{preview(line)}'")

        n = len(self.groups)
        batch = Batch.empty(n, ts_ns)
        raw = np.zeros(n, dtype=np.float64)
        present = np.ones(n, dtype=bool)
        bad: list[int] = []
        for i, (group, convert) in enumerate(zip(self.groups, self.converters)):
            value = match.group(group)
            if value is None:
                present[i] = False
                continue
            if convert is None:
                batch.strings[i] = value
                raw[i] = np.nan
                continue
            try:
                raw[i] = convert(value)
            except ValueError:
                bad.append(i)
        batch.values[:] = raw * self.scale + self.offset
        if bad:
            batch.mark_bad(bad, ERR_VALUE, ERROR_TEXT[ERR_VALUE])
        return Parsed(batch, present, len(bad))
