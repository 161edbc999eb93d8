"""Cutting a serial byte stream into lines: terminator, longest line, partial lines.

Pure byte handling, no I/O: the port feeds what it reads, the driver takes complete lines. Searching is
done by ``bytes.find`` (C speed), so the Python work is per line, never per byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class LineCounters:
    """What happened to the lines a serial instrument sent (monotonic counts since the driver was created).

    ``accepted`` lines gave values; every other count is a line (or fragment) that was discarded.
    """

    accepted: int = 0  # lines parsed into values
    no_match: int = 0  # complete lines the pattern does not match (noise, other messages)
    checksum: int = 0  # complete lines whose checksum is wrong or missing
    decode: int = 0  # complete lines that are not valid text in the configured encoding
    overlong: int = 0  # lines longer than max_line (discarded up to the next terminator)
    partial: int = 0  # fragments without terminator, dropped after char_timeout or before a poll
    bad_value: int = 0  # matched lines with a group that does not convert (counted once per line)
    empty: int = 0  # lines with nothing before the terminator (skipped)
    unsolicited: int = 0  # poll mode: lines that arrived while no reply was expected
    overflow: int = 0  # received lines dropped because nobody took them (more than 1024 waiting)
    bytes_in: int = 0  # bytes read from the port

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def discarded(self) -> int:
        """Lines and fragments thrown away, whatever the reason."""
        return (
            self.no_match
            + self.checksum
            + self.decode
            + self.overlong
            + self.partial
            + self.unsolicited
            + self.overflow
        )


class LineFramer:
    """Splits bytes into lines ending with ``terminator`` (not included), at most ``max_line`` bytes each.

    A line that grows past ``max_line`` without a terminator is dropped and everything up to the next
    terminator is skipped with it (counted once in ``counters.overlong``), so a stream of garbage cannot grow
    memory. :meth:`drop_partial` throws away an unfinished line (counted in ``counters.partial``).
    """

    def __init__(self, terminator: bytes, max_line: int, counters: LineCounters) -> None:
        if not terminator:
            raise ValueError("terminator must not be empty")
        self.terminator = terminator
        self.max_line = max_line
        self.counters = counters
        self._buf = bytearray()
        self._skipping = False  # inside an overlong line, until its terminator

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back (0 while skipping an overlong line)."""
        return 0 if self._skipping else len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete lines they finish, oldest first (empty lines included)."""
        self.counters.bytes_in += len(data)
        buf = self._buf
        buf += data
        term, n_term = self.terminator, len(self.terminator)
        lines: list[bytes] = []
        start = 0
        while True:
            end = buf.find(term, start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            elif end - start > self.max_line:
                self.counters.overlong += 1
            else:
                lines.append(bytes(buf[start:end]))
            start = end + n_term
        del buf[:start]
        if len(buf) > self.max_line + n_term - 1:
            if not self._skipping:
                self.counters.overlong += 1
                self._skipping = True
            del buf[: len(buf) - (n_term - 1)]  # keep what could be the start of a split terminator
        return lines

    @property
    def holding(self) -> bool:
        """An unfinished line, or the rest of an overlong one, is waiting for its terminator."""
        return self._skipping or bool(self._buf)

    def drop_partial(self) -> int:
        """Discard an unfinished line (and end the skipping of an overlong one, already counted);
        returns the length of the dropped partial line (0 when there was none)."""
        n = self.pending
        if n:
            self.counters.partial += 1
        self._buf.clear()
        self._skipping = False
        return n
