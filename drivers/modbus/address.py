"""Modbus addresses in the forms integrators write, parsed into (table, 0-based offset, bit).

Accepted forms (case-insensitive, surrounding spaces ignored):

- ``40001`` / ``"40001"``: 5 digits, 1-based; the first digit is the table
  (``0`` coil, ``1`` discrete input, ``3`` input register, ``4`` holding register), so ``40001`` is
  holding register 0 and ``49999`` holding register 9998.
- ``400001`` .. ``465536``: the 6-digit form of the same, up to register 65535.
- ``4x0001`` / ``3x1`` (Modicon style): table digit, ``x``, 1-based number 1..65536.
- ``hr:0``, ``ir:0``, ``co:0``, ``di:0``: explicit table and 0-based offset 0..65535.
- a bit of a register: ``40010.3``, ``4x10.3``, ``hr:9.3`` (bit 0..15, 0 = least significant).

YAML turns an unquoted ``00001`` into the integer ``1`` and ``40010.10`` into the float ``40010.1``.
So a bare integer with fewer than 5 digits is rejected (quote it: ``"00001"``), and for floats the
original YAML text is used when the config loader kept it (a ``float`` subclass with ``.text``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Table(str, Enum):
    """The four Modbus data tables, by their short prefix."""

    COIL = "co"
    DISCRETE_INPUT = "di"
    INPUT_REGISTER = "ir"
    HOLDING_REGISTER = "hr"

    @property
    def is_bits(self) -> bool:
        """Coils and discrete inputs hold single bits; the other two hold 16-bit registers."""
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Table.COIL: "coil",
    Table.DISCRETE_INPUT: "discrete input",
    Table.INPUT_REGISTER: "input register",
    Table.HOLDING_REGISTER: "holding register",
}
_DIGIT_TABLE = {"0": Table.COIL, "1": Table.DISCRETE_INPUT, "3": Table.INPUT_REGISTER, "4": Table.HOLDING_REGISTER}

MAX_OFFSET = 65535

ACCEPTED_FORMS = (
    'accepted forms: "40001" (5 or 6 digits, 1-based, first digit the table: 0 coil, 1 discrete input, '
    '3 input register, 4 holding register; quote it in YAML so leading zeros stay, e.g. "00001"), '
    '"4x0001", "hr:0" / "ir:0" / "co:0" / "di:0" (0-based), and a bit of a register "40010.3" or "hr:9.3"'
)

_EXPLICIT = re.compile(r"^(hr|ir|co|di):(\d{1,5})(?:\.(\d{1,2}))?$", re.IGNORECASE)
_MODICON_X = re.compile(r"^(\d)x(\d{1,5})(?:\.(\d{1,2}))?$", re.IGNORECASE)
_DIGITS = re.compile(r"^(\d+)(?:\.(\d+))?$")


class AddressError(ValueError):
    """The address is not in an accepted form or out of range (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class ModbusAddress:
    """A parsed address: table, 0-based offset, and for a bit of a register its bit number (0 = LSB)."""

    table: Table
    offset: int
    bit: int | None = None

    def __str__(self) -> str:
        bit = f".{self.bit}" if self.bit is not None else ""
        return f"{self.table.value}:{self.offset}{bit}"


def address_text(value: Any) -> str:
    """The address as the text the user wrote (YAML may have made it an int or a float).

    Raises :class:`AddressError` for a bare integer too short to carry its table digit, and for
    values that are neither text nor numbers.
    """
    if isinstance(value, bool):
        raise AddressError(f"{value!r} is not a Modbus address; {ACCEPTED_FORMS}")
    if isinstance(value, int):
        text = str(value)
        if value < 0 or len(text) < 5:
            raise AddressError(
                f"bare number {value} has no table digit (YAML reads an unquoted 00001 as 1); "
                f"{ACCEPTED_FORMS}"
            )
        return text
    if isinstance(value, float):
        written = getattr(value, "text", None)  # a YamlFloat keeps the number as written
        return str(written).strip() if written is not None else repr(value)
    if isinstance(value, str):
        return value.strip()
    raise AddressError(f"expected a Modbus address, got {type(value).__name__}; {ACCEPTED_FORMS}")


def _bit(text: str | None, whole: str) -> int | None:
    if text is None:
        return None
    bit = int(text)
    if bit > 15:
        raise AddressError(f"{whole!r}: bit {bit} is out of range, a register has bits 0..15 (0 = least significant)")
    return bit


def _one_based(table_digit: str, number: int, whole: str, bit: int | None) -> ModbusAddress:
    table = _DIGIT_TABLE.get(table_digit)
    if table is None:
        raise AddressError(f"{whole!r}: first digit {table_digit} is not a Modbus table; {ACCEPTED_FORMS}")
    if not 1 <= number <= MAX_OFFSET + 1:
        raise AddressError(f"{whole!r}: register number {number} is out of range 1..65536 (these forms are 1-based)")
    return ModbusAddress(table, number - 1, bit)


def parse_address(value: Any) -> ModbusAddress:
    """Parse any accepted form (see the module docstring) into a :class:`ModbusAddress`.

    Raises :class:`AddressError` (a ``ValueError``) with a message showing the accepted forms.
    """
    text = address_text(value)
    if not text:
        raise AddressError(f"empty address; {ACCEPTED_FORMS}")

    m = _EXPLICIT.match(text)
    if m:
        offset = int(m.group(2))
        if offset > MAX_OFFSET:
            raise AddressError(f"{text!r}: offset {offset} is out of range 0..65535 (this form is 0-based)")
        addr = ModbusAddress(Table(m.group(1).lower()), offset, _bit(m.group(3), text))
    elif m := _MODICON_X.match(text):
        addr = _one_based(m.group(1), int(m.group(2)), text, _bit(m.group(3), text))
    elif m := _DIGITS.match(text):
        digits = m.group(1)
        if len(digits) not in (5, 6):
            raise AddressError(
                f"{text!r} has {len(digits)} digits; the numeric form needs 5 or 6 (table digit + 1-based "
                f"register); {ACCEPTED_FORMS}"
            )
        addr = _one_based(digits[0], int(digits[1:]), text, _bit(m.group(2), text))
    else:
        raise AddressError(f"{text!r} is not a Modbus address; {ACCEPTED_FORMS}")

    if addr.bit is not None and addr.table.is_bits:
        raise AddressError(f"{text!r}: a .bit suffix selects a bit of a register; a {addr.table.label} is already one bit")
    return addr
