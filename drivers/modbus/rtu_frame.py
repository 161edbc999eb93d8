"""Modbus RTU framing: CRC-16, character timing, and finding one slave's answer in received bytes.

An RTU frame is ``unit, function code, data..., CRC low, CRC high``. The frame has no length field, so a
master knows where an answer ends from the function code it asked for:

- exception answer (function code | 0x80): 5 bytes;
- reads (FC 1, 2, 3, 4, 23): ``5 + byte count`` (the third byte);
- single and multiple writes (FC 5, 6, 15, 16): 8 bytes (an echo of address and value/count).

:func:`scan_response` looks for the first CRC-valid answer of the expected slave and function anywhere in
the received bytes, so stray bytes (line noise at bus turnaround, the tail of an earlier late answer) before
a frame are skipped and counted instead of breaking the transaction. Everything here is pure and has no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: ``Batch.errors`` codes of RTU answers that arrived but cannot be used (the rest of the poll stands).
CRC_ERROR = 1002
TRUNCATED_FRAME = 1003
MALFORMED_FRAME = 1004

_BYTE_COUNT_FUNCTIONS = frozenset({1, 2, 3, 4, 23})
_ECHO_FUNCTIONS = frozenset({5, 6, 15, 16})


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF) of ``data``; sent low byte first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def frame(unit: int, pdu: bytes) -> bytes:
    """The RTU frame of ``pdu`` (function code + data) for slave ``unit``."""
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


def bits_per_char(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the wire per character: start bit + data bits + parity bit (unless N) + stop bits."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def silent_interval(baudrate: int, bits: float) -> float:
    """The 3.5-character inter-frame gap (t3.5); the spec fixes it at 1.75 ms above 19200 baud."""
    return 0.00175 if baudrate > 19200 else 3.5 * bits / baudrate


class Outcome(Enum):
    """What the received bytes hold so far, for one expected answer."""

    FOUND = "found"  # a CRC-valid answer of the right slave and function
    NOTHING = "nothing"  # no byte at all
    GARBAGE = "garbage"  # bytes, but nothing that starts like the expected answer
    PARTIAL = "partial"  # the start of the expected answer; the rest has not (yet) arrived
    BAD_CRC = "bad_crc"  # a complete-looking answer whose CRC does not match


@dataclass(frozen=True, slots=True)
class Scan:
    """Result of :func:`scan_response`: ``pdu`` (function code + data, no unit/CRC) when found.

    ``skipped`` counts bytes before the answer (stray bytes); ``end`` is the index just past it.
    """

    outcome: Outcome
    pdu: bytes = b""
    skipped: int = 0
    end: int = 0


def _frame_length(buf: bytes | bytearray, i: int, function: int) -> int:
    """Length of the answer starting at ``buf[i]``, or 0 when its byte count has not arrived yet."""
    if buf[i + 1] & 0x80:
        return 5
    if function in _BYTE_COUNT_FUNCTIONS:
        return 5 + buf[i + 2] if i + 2 < len(buf) else 0
    if function in _ECHO_FUNCTIONS:
        return 8
    raise ValueError(f"function code {function} is not supported by the RTU transport")


def scan_response(buf: bytes | bytearray, unit: int, function: int) -> Scan:
    """Find the answer of slave ``unit`` to ``function`` in ``buf`` (everything received since the request).

    Returns the first CRC-valid candidate; otherwise the most telling failure: a complete candidate with a
    bad CRC, then an incomplete candidate, then plain garbage. Only candidates starting with the expected
    unit id and function code (or its exception form) are considered, so a frame of another slave or stray
    bytes can never be taken for the answer.
    """
    if not buf:
        return Scan(Outcome.NOTHING)
    wanted = (function, function | 0x80)
    partial = bad_crc = False
    n = len(buf)
    for i in range(n - 1):
        if buf[i] != unit or buf[i + 1] not in wanted:
            continue
        length = _frame_length(buf, i, function)
        if length == 0 or i + length > n:
            partial = True
            continue
        end = i + length
        if crc16(buf[i : end - 2]) == int.from_bytes(buf[end - 2 : end], "little"):
            return Scan(Outcome.FOUND, bytes(buf[i + 1 : end - 2]), skipped=i, end=end)
        bad_crc = True
    if bad_crc:
        return Scan(Outcome.BAD_CRC)
    if partial:
        return Scan(Outcome.PARTIAL)
    return Scan(Outcome.GARBAGE)
