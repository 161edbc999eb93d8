"""The inverse of :mod:`drivers.modbus.decode`: one engineering value -> what to write to one Modbus tag.

:func:`encode_write` turns a value into a :class:`WriteOp` (registers or a bit, and where), raising
``ValueError`` with a message meant for the person who sent the value when it cannot be encoded.
:func:`readback_value` turns what was read back into the value reported to that person. Pure functions:
no I/O, so every rule below is unit-tested without a device.

Rules a user relies on (the same conventions as decoding, run backwards):

- ``raw = (value - offset) / scale``. Integer types need a whole raw number (``1.5`` to an ``int16``, or
  ``21.53`` to an ``int16`` with ``scale: 0.1``, is refused; nothing is rounded silently) within the type's
  range (``70000`` to a ``uint16`` is refused). A rounding error of the inverse scaling below 1e-9 of the
  raw value is tolerated (``(21.5 + 50) / 0.1`` is 714.99999999999989).
- ``int64``/``uint64`` are exact for JSON integers (and decimal strings such as ``"18446744073709549568"``,
  for clients whose numbers are doubles) when scale is 1 and offset 0; with scaling they go through float64
  (exact up to 2**53).
- ``float32``: finite and within +-3.4028235e38; the nearest float32 is written (``0.1`` becomes
  0.100000001490116). NaN and infinities are refused.
- Byte orders: ABCD big endian; CDAB all words reversed; BADC bytes swapped in each word; DCBA both.
- ``bool`` (coil) and ``bit`` (of a holding register): ``true``/``false`` or ``1``/``0``.
- ``string``: ASCII only, at most ``2 * length`` characters, padded with NULs to ``length`` registers,
  high byte first (BADC: low byte first). Trailing spaces are not kept by reads (they are stripped).
- Only coils and holding registers can be written; discrete inputs and input registers are read-only in
  Modbus itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.modbus.address import Table
from drivers.modbus.config import ModbusTag
from drivers.modbus.plan import NUMPY_TYPES
from gateway.scaling import TagNotWritable, engineering, raw_bool, raw_float, raw_integer

INT_RANGES = {
    "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1),
}  # fmt: skip
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class WriteOp:
    """What to write: ``words`` from 0-based ``address`` of the holding registers, or one coil ``bit``,
    or (``bit_index`` set) one bit of the holding register at ``address`` (read-modify-write)."""

    table: Table
    address: int
    words: tuple[int, ...] = ()
    bit: bool | None = None
    bit_index: int | None = None

    def __str__(self) -> str:
        if self.table is Table.COIL:
            return f"co:{self.address} := {int(bool(self.bit))}"
        if self.bit_index is not None:
            return f"hr:{self.address}.{self.bit_index} := {int(bool(self.bit))}"
        return f"hr:{self.address}+{len(self.words)} := [{', '.join(f'0x{w:04X}' for w in self.words)}]"


def _permute(words: np.ndarray, byte_order: str) -> np.ndarray:
    """ABCD words <-> the device's layout (each step is its own inverse, so this works both ways)."""
    if byte_order in ("CDAB", "DCBA"):
        words = np.ascontiguousarray(words[::-1])
    if byte_order in ("BADC", "DCBA"):
        words = words.byteswap()
    return words


def _string_words(tag: ModbusTag, value: Any) -> np.ndarray:
    if not isinstance(value, str):
        raise ValueError(f"tag {tag.name!r} is a string: write text, not {value!r}")
    width = 2 * (tag.length or 0)
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"tag {tag.name!r}: only ASCII text can be written to Modbus registers") from None
    if b"\x00" in data:
        raise ValueError(f"tag {tag.name!r}: text must not contain NUL characters")
    if len(data) > width:
        raise ValueError(f"tag {tag.name!r}: {len(data)} characters do not fit {tag.length} registers ({width} max)")
    words = np.frombuffer(data.ljust(width, b"\x00"), dtype=">u2")
    return words.byteswap() if tag.byte_order == "BADC" else words


def encode_write(tag: ModbusTag, value: Any) -> WriteOp:
    """The :class:`WriteOp` that stores engineering ``value`` in ``tag``.

    Raises ``ValueError`` when the value cannot be encoded for this tag, and
    :class:`~gateway.scaling.TagNotWritable` for a discrete input or input register.
    """
    ref = tag.ref
    if ref.table in (Table.DISCRETE_INPUT, Table.INPUT_REGISTER):
        raise TagNotWritable(f"tag {tag.name!r} is a {ref.table.label}, which is read-only in Modbus")
    if tag.type == "bool":
        return WriteOp(Table.COIL, ref.offset, bit=raw_bool(tag, value, "coil (bool)"))
    if tag.type == "bit":
        return WriteOp(Table.HOLDING_REGISTER, ref.offset, bit=raw_bool(tag, value, "bit"), bit_index=ref.bit)
    if tag.type == "string":
        words = _string_words(tag, value)
    else:
        dtype = np.dtype(NUMPY_TYPES[tag.type])
        if dtype.kind == "f":
            raw: int | float = raw_float(tag, value, tag.type, FLOAT32_MAX if dtype.itemsize == 4 else math.inf)
        else:
            raw = raw_integer(tag, value, tag.type, *INT_RANGES[tag.type])
        words = _permute(np.array([raw], dtype=dtype).view(">u2"), tag.byte_order)
    return WriteOp(Table.HOLDING_REGISTER, ref.offset, words=tuple(int(w) for w in words.astype(np.uint16)))


def set_bit(register: int, bit: int, on: bool) -> int:
    """``register`` with bit ``bit`` (0 = least significant) set or cleared."""
    mask = 1 << bit
    return (register | mask) if on else (register & ~mask & 0xFFFF)


def readback_value(tag: ModbusTag, words: tuple[int, ...] | None = None, bit: bool | None = None) -> Any:
    """The engineering value of what was read back (as a JSON-friendly Python value).

    Bits and coils give ``True``/``False``; strings their text (as polls decode it); integer types an exact
    ``int`` when unscaled; float32 its shortest float32 text; scaled values ``raw * scale + offset``.
    """
    if tag.type in ("bool", "bit"):
        return bool(bit)
    arr = np.array(words or (), dtype=np.uint16)
    if tag.type == "string":
        data = (arr.byteswap() if tag.byte_order == "BADC" else arr).astype(">u2").tobytes()
        return data.split(b"\x00", 1)[0].decode("ascii", errors="replace").rstrip(" ")
    dtype = np.dtype(NUMPY_TYPES[tag.type])
    raw = _permute(arr.astype(">u2"), tag.byte_order).view(dtype)[0]
    if dtype.kind == "f":
        # float32: its shortest text (12.3, not 12.300000190734863) before scaling
        return engineering(tag, float(str(raw)) if dtype.itemsize == 4 else float(raw))
    return engineering(tag, int(raw))
