"""Does an answer belong to its request? The content checks every Modbus transport applies.

A device (or a gateway in front of it) can answer with a well-formed frame that is not the answer to the
request sent: the other table's function code, more or fewer registers than asked for, a byte count that
does not fit. pymodbus decodes such frames happily, and their values would be published with quality good.
:func:`answer_mismatch` compares the PDU of an answer with the PDU of its request, byte for byte, before
anything is decoded. Transaction id and unit id are the transport's part (MBAP header, RTU address byte).
"""

from __future__ import annotations

#: ``Batch.errors`` code of an answer that does not match its request (wrong function code, count,
#: byte count, transaction id or unit id). The poll's other requests stand.
MISMATCHED_ANSWER = 1005

_BIT_READS = frozenset({1, 2})
_REGISTER_READS = frozenset({3, 4, 23})
_SINGLE_WRITES = frozenset({5, 6})
_MULTI_WRITES = frozenset({15, 16})


def _read_count(request: bytes) -> int:
    """Quantity field of a read request (registers or bits); FC 23's read quantity."""
    return int.from_bytes(request[3:5], "big")


def answer_mismatch(request: bytes, answer: bytes) -> str | None:
    """Why PDU ``answer`` (function code + data) cannot be the answer to PDU ``request``; ``None`` when it can.

    Checked: the function code is the request's (or its exception form, then exactly one code byte
    follows); a read's byte count is exactly what the requested quantity needs (``2 x registers``,
    ``ceil(bits / 8)``) and exactly that many data bytes follow; a single write echoes the request; a
    multiple write echoes its address and quantity. Pure, never raises.
    """
    if not request:
        return "empty request"
    if not answer:
        return "empty answer"
    function = request[0]
    got = answer[0]
    if got == function | 0x80:
        return None if len(answer) == 2 else f"exception answer of {len(answer)} bytes instead of 2"
    if got != function:
        return f"function code {got} in the answer to a function {function} request"
    if function in _BIT_READS or function in _REGISTER_READS:
        count = _read_count(request)
        expected = (count + 7) // 8 if function in _BIT_READS else 2 * count
        what = f"{count} {'bits' if function in _BIT_READS else 'registers'}"
        if len(answer) < 2:
            return f"answer without byte count to a read of {what}"
        byte_count = answer[1]
        if byte_count != expected:
            return f"byte count {byte_count} in the answer to a read of {what} (expected {expected})"
        if len(answer) != 2 + byte_count:
            return f"{len(answer) - 2} data bytes after byte count {byte_count}"
        return None
    if function in _SINGLE_WRITES:
        return None if answer == request else "the answer to a single write does not echo the request"
    if function in _MULTI_WRITES:
        return None if answer == request[:5] else "the answer to a multiple write does not echo its address and count"
    return None
