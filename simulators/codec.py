"""Encoding of engineering values into Modbus registers, written independently of the gateway's decoder.

A value of a fixed-size type is packed big-endian with :mod:`struct` (byte order ``ABCD``), cut into 16-bit
words, then rearranged for the point's byte order:

====== ============================================== ==========================
order  meaning                                        float32 1.0 (0x3F800000)
====== ============================================== ==========================
ABCD   big endian (default)                           ``3F80 0000``
CDAB   word order reversed, bytes in a word big end.  ``0000 3F80``
BADC   word order kept, the two bytes of each swapped ``803F 0000``
DCBA   little endian                                  ``0000 803F``
====== ============================================== ==========================

For 64-bit values CDAB reverses all four words. 16-bit values and strings only have ABCD or BADC (bytes of
the register swapped). Strings are ASCII, two characters per register, the first in the high byte, padded
with NUL.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

#: struct format and register count of each fixed-size register type.
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": (">h", 1), "uint16": (">H", 1),
    "int32": (">i", 2), "uint32": (">I", 2), "float32": (">f", 2),
    "int64": (">q", 4), "uint64": (">Q", 4), "float64": (">d", 4),
}  # fmt: skip
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
FLOAT_TYPES = frozenset({"float32", "float64"})
REGISTER_TYPES = frozenset(_FORMATS) | {"bit", "string"}
BIT_TYPES = frozenset({"bool"})
BYTE_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
#: byte orders each type accepts; wider types accept all four.
ALLOWED_ORDERS: dict[str, tuple[str, ...]] = {
    "int16": ("ABCD", "BADC"), "uint16": ("ABCD", "BADC"), "string": ("ABCD", "BADC"),
    "bit": ("ABCD",), "bool": ("ABCD",),
}  # fmt: skip


def register_count(type_: str, length: int | None = None) -> int:
    """Registers a value of ``type_`` occupies (``length`` for strings; 1 for a bit; 0 for coil/DI bools)."""
    if type_ == "string":
        return int(length or 0)
    if type_ == "bit":
        return 1
    if type_ == "bool":
        return 0
    return _FORMATS[type_][1]


def integer_range(type_: str) -> tuple[int, int]:
    """Smallest and largest raw value of an integer type."""
    bits = 16 * _FORMATS[type_][1]
    if type_.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _arrange(words: np.ndarray, byte_order: str) -> np.ndarray:
    if byte_order in ("BADC", "DCBA"):
        words = words.byteswap()
    if byte_order in ("CDAB", "DCBA"):
        words = words[::-1]
    return np.ascontiguousarray(words, dtype=np.uint16)


def raw_value(type_: str, value: Any, scale: float = 1.0, offset: float = 0.0, *, strict: bool = False) -> Any:
    """Engineering value -> raw register value: ``(value - offset) / scale``, rounded for integer types.

    Out-of-range integers wrap like a PLC counter (two's complement), unless ``strict`` (then ``ValueError``).
    """
    if isinstance(value, str):
        raise ValueError(f"{value!r} is text; a {type_} needs a number")
    number = (float(value) - offset) / scale if (scale != 1.0 or offset != 0.0) else value
    if type_ in FLOAT_TYPES:
        return float(number)
    if isinstance(number, float):
        if not math.isfinite(number):
            raise ValueError(f"{value!r} cannot be stored in a {type_}")
        number = round(number)
    number = int(number)
    low, high = integer_range(type_)
    if not low <= number <= high:
        if strict:
            raise ValueError(f"{value!r} (raw {number}) is outside the {type_} range {low}..{high}")
        bits = 16 * _FORMATS[type_][1]
        number &= (1 << bits) - 1
        if low < 0 and number > high:
            number -= 1 << bits
    return number


def encode_number(type_: str, raw: Any, byte_order: str = "ABCD") -> np.ndarray:
    """A raw value (see :func:`raw_value`) -> its registers (uint16 array) in ``byte_order``."""
    fmt, _count = _FORMATS[type_]
    words = np.frombuffer(struct.pack(fmt, raw), dtype=">u2")
    return _arrange(words, byte_order)


def encode_string(text: str, length: int, byte_order: str = "ABCD", *, strict: bool = False) -> np.ndarray:
    """ASCII text -> ``length`` registers, two characters each, first in the high byte, NUL padded.

    Longer text is cut to ``2 * length`` characters, unless ``strict`` (then ``ValueError``).
    """
    try:
        data = str(text).encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{text!r} is not ASCII") from exc
    if len(data) > 2 * length and strict:
        raise ValueError(f"{text!r} has {len(data)} characters; {length} registers hold at most {2 * length}")
    data = data[: 2 * length].ljust(2 * length, b"\x00")
    return _arrange(np.frombuffer(data, dtype=">u2"), byte_order)
