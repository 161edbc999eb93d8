"""Modbus addresses in the integrator's forms, parsed for the simulator's point map.

The simulator keeps its own parser (it must not import ``gateway`` or ``drivers``, so a bug there cannot be
cancelled out here). Accepted forms:

- ``"40001"``: 5 digits, 1-based, the first digit is the table (``0`` coil, ``1`` discrete input, ``3`` input
  register, ``4`` holding register); ``"400001"``..``"465536"`` is the 6-digit form;
- ``"4x0001"`` (Modicon style);
- ``"hr:0"``, ``"ir:0"``, ``"co:0"``, ``"di:0"``: explicit table, 0-based;
- a bit of a register: ``"40010.3"``, ``"hr:9.3"`` (bit 0 = least significant).

YAML reads an unquoted ``00001`` as the integer 1, so bare integers below 10000 are rejected. An unquoted
``40010.10`` is the float ``40010.1``; the original digits are recovered from ruamel's ``ScalarFloat`` when the
file was loaded by :func:`simulators.config.load_plant_config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TABLES = ("hr", "ir", "co", "di")
BIT_TABLES = frozenset({"co", "di"})
_DIGIT_TABLE = {"0": "co", "1": "di", "3": "ir", "4": "hr"}
TABLE_LABEL = {"hr": "holding register", "ir": "input register", "co": "coil", "di": "discrete input"}

FORMS = (
    'use "40001" (5/6 digits, 1-based; first digit 0 coil, 1 discrete input, 3 input register, '
    '4 holding register), "4x0001", 0-based "hr:0"/"ir:0"/"co:0"/"di:0", or a register bit "40010.3"; '
    'quote addresses with leading zeros ("00001")'
)

_EXPLICIT = re.compile(r"^(hr|ir|co|di):(\d{1,5})(?:\.(\d{1,2}))?$", re.IGNORECASE)
_MODICON = re.compile(r"^([0134])x(\d{1,5})(?:\.(\d{1,2}))?$", re.IGNORECASE)
_NUMERIC = re.compile(r"^([0134])(\d{4,5})(?:\.(\d{1,2}))?$")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address: table (``hr``/``ir``/``co``/``di``), 0-based offset, optional bit of the register."""

    table: str
    offset: int
    bit: int | None = None

    def __str__(self) -> str:
        return f"{self.table}:{self.offset}" + ("" if self.bit is None else f".{self.bit}")


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a Modbus address; {FORMS}")
    if isinstance(value, int):
        if value < 10000:
            raise ValueError(f"bare number {value} has no table digit (YAML reads 00001 as 1); {FORMS}")
        return str(value)
    if isinstance(value, float):
        width, point = getattr(value, "_width", None), getattr(value, "_prec", None)
        if isinstance(width, int) and isinstance(point, int) and width > point >= 0:
            return f"{value:.{width - point - 1}f}"
        return repr(value)
    return value.strip()


def parse_address(value: Any) -> Address:
    """Parse one of the accepted forms; raises ``ValueError`` naming the accepted forms."""
    text = _text(value)
    if m := _EXPLICIT.match(text):
        table, offset = m.group(1).lower(), int(m.group(2))
    elif (m := _MODICON.match(text)) or (m := _NUMERIC.match(text)):
        table, number = _DIGIT_TABLE[m.group(1)], int(m.group(2))
        if not 1 <= number <= 65536:
            raise ValueError(f"{text!r}: register number {number} is outside 1..65536 (this form is 1-based)")
        offset = number - 1
    else:
        raise ValueError(f"{text!r} is not a Modbus address; {FORMS}")
    if offset > 65535:
        raise ValueError(f"{text!r}: offset {offset} is outside 0..65535")
    bit = None if m.group(3) is None else int(m.group(3))
    if bit is not None:
        if table in BIT_TABLES:
            raise ValueError(f"{text!r}: a .bit suffix selects a bit of a register; a {TABLE_LABEL[table]} is one bit")
        if bit > 15:
            raise ValueError(f"{text!r}: bit {bit} is outside 0..15")
    return Address(table, offset, bit)
