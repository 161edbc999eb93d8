"""Kepware-style CSV tag exports -> the ``tags:`` lines of a Modbus asset (``iiot-gateway tags import``).

Contract (what a user relies on):

- The file is a Kepware CSV export: a heading record naming the columns (``Tag Name``, ``Address``,
  ``Data Type``, ``Respect Data Type``, ``Client Access``, ``Scan Rate``, ``Scaling``, ``Raw Low``,
  ``Raw High``, ``Scaled Low``, ``Scaled High``, ``Scaled Data Type``, ``Clamp Low``, ``Clamp High``,
  ``Eng. Units``, ``Description``, ``Negate Value``), then one record per tag. Columns may come in any order
  (matched by name, ignoring case, spaces and dots); unknown columns are ignored; quoting, a UTF-8 BOM, CRLF
  line ends, and a ``;`` or tab delimiter are accepted. Files that are not UTF-8 are read as Windows-1252.
- Every record becomes one tag, validated with the driver's own tag model, or one :class:`RowError` with the
  record's line number; the others are still converted.
- Addresses: Kepware's decimal forms (``400001``, ``40001``, and the short forms it pads: ``41``, ``401``,
  ``4001``), a bit of a register ``400001.3``, a string ``400001.20H`` / ``400001.20L`` (20 characters, high or
  low byte first), plus our own forms (``4x0001``, ``hr:0``). Arrays (``400001[4]``) are refused.
- Types: Kepware names (``Float`` float32, ``Double`` float64, ``Short`` int16, ``Word`` uint16, ``Long``
  int32, ``DWord`` uint32, ``LLong`` int64, ``QWord`` uint64, ``Boolean`` bool on a coil/discrete input or
  bit with ``.bb``, ``String``, ``Default`` the table's default) and our own names; ``BCD``, ``LBCD``,
  ``Char``, ``Byte``, ``Date`` and arrays are refused with a reason; a near miss of ours (``float``, all lower
  case, is ours misspelt: Kepware writes ``Float``) gets "did you mean float32?".
- ``Scaling`` Linear becomes ``scale``/``offset`` (scaled = raw * scale + offset); Square Root is refused.
- ``Client Access`` R/W becomes ``writable: true`` only when the caller asks for it (``writable=True``);
  otherwise a YAML comment says the tag was writable in Kepware. Writes stay off by default.
- Kepware keeps the word order of 32/64-bit values in the *device* settings, not in the CSV; the caller
  chooses it (``byte_order``) and it applies to every 32/64-bit tag.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from drivers.modbus.address import AddressError, Table, parse_address
from drivers.modbus.config import REGISTERS, ModbusTag
from gateway.config.common import NAME_PATTERN

#: Columns matched by their normalised heading (lower case, no spaces or dots) -> our field.
_COLUMNS = {
    "tagname": "name", "name": "name",
    "address": "address",
    "datatype": "type",
    "clientaccess": "access",
    "scaling": "scaling",
    "rawlow": "raw_low", "rawhigh": "raw_high", "scaledlow": "scaled_low", "scaledhigh": "scaled_high",
    "clamplow": "clamp_low", "clamphigh": "clamp_high",
    "engunits": "unit", "engineeringunits": "unit", "units": "unit",
    "description": "description",
    "negatevalue": "negate",
}  # fmt: skip

#: Kepware data type (lower case) -> ours. ``bool`` becomes ``bit`` on a bit of a register.
KEPWARE_TYPES = {
    "boolean": "bool", "short": "int16", "word": "uint16", "long": "int32", "dword": "uint32",
    "llong": "int64", "qword": "uint64", "float": "float32", "double": "float64", "string": "string",
}  # fmt: skip
OUR_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "bit", "string")
_REFUSED_TYPES = {
    "bcd": "BCD (binary-coded decimal) is not supported; read the register as uint16 and convert downstream",
    "lbcd": "LBCD (32-bit binary-coded decimal) is not supported; read it as uint32 and convert downstream",
    "char": "Char (8-bit) is not supported: Modbus registers are 16 bits; use Short (int16)",
    "byte": "Byte (8-bit) is not supported: Modbus registers are 16 bits; use Word (uint16)",
    "date": "Date is not supported; read the registers as float64 or int64",
}
_DEFAULT_TYPE = {
    Table.COIL: "bool",
    Table.DISCRETE_INPUT: "bool",
    Table.INPUT_REGISTER: "uint16",
    Table.HOLDING_REGISTER: "uint16",
}

_KEPWARE_ADDRESS = re.compile(r"^([0134])(\d{1,5})(?:\.(\d{1,3})\s*([HL])?)?$", re.IGNORECASE)
_NAME_RE = re.compile(NAME_PATTERN)
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


class NotKepwareCsv(ValueError):
    """The file is not a tag CSV: unreadable, binary, or no heading with ``Tag Name`` and ``Address``."""


class RowError(ValueError):
    """A record that could not be converted: its first line in the file, the tag name, and why."""

    def __init__(self, line: int, name: str, message: str) -> None:
        super().__init__(message)
        self.line, self.name, self.message = line, name, message

    def __str__(self) -> str:
        who = f"tag {self.name!r}: " if self.name else ""
        return f"{self.line}: {who}{self.message}"


@dataclass(slots=True)
class ImportedTag:
    """One converted tag: its YAML fields in order, and comments to print after them."""

    line: int
    fields: dict[str, Any]
    comments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ImportResult:
    """Every converted tag and every row error, in file order."""

    tags: list[ImportedTag]
    errors: list[RowError]
    multi_register: bool = False  # a 32/64-bit tag was imported: the word order matters

    def yaml(self, source: str = "") -> str:
        """The tags as YAML list items at column 0 (indent them under an asset's ``tags:``)."""
        out = []
        if source:
            out.append(f"# {len(self.tags)} tags imported from {source} by iiot-gateway tags import")
        for tag in self.tags:
            first = True
            for key, value in tag.fields.items():
                out.append(f"{'- ' if first else '  '}{key}: {yaml_scalar(value)}")
                first = False
            out.extend(f"  # {' '.join(c.split())}" for c in tag.comments)  # a comment stays on its line
        return "\n".join(out) + "\n"


def yaml_scalar(value: Any) -> str:
    """A YAML scalar for ``value``: plain where that reads back the same, else double-quoted (JSON escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS and not _looks_numeric(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _looks_numeric(text: str) -> bool:
    try:
        float(text.replace("_", ""))
    except ValueError:
        return False
    return True


def _norm(heading: str) -> str:
    return re.sub(r"[\s._]", "", heading.lstrip("\ufeff")).lower()


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        raise NotKepwareCsv("the file is binary (it holds NUL bytes), not a CSV export")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # Kepware on Windows writes the ANSI code page


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","


def suggest_name(name: str) -> str:
    """A name our configs accept, made from a Kepware name (other characters become ``_``)."""
    fixed = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.strip())
    fixed = re.sub(r"^[.\-]+", "", fixed)
    return fixed[:64] or "tag"


def _number(row: dict[str, str], key: str, line: int, name: str) -> float:
    text = (row.get(key) or "").strip()
    try:
        return float(text)
    except ValueError:
        raise RowError(line, name, f"{key.replace('_', ' ')} {text!r} is not a number") from None


def _map_type(kepware: str) -> str | None:
    """Our type for a Kepware (or our own) type name; ``None`` for Default; raises ValueError otherwise.

    Kepware writes its names capitalised (``Float``, ``DWord``; any case but all lower is taken as Kepware's);
    an all-lower-case name is read as one of ours, so ``float`` is a near miss of ``float32``, not a guess.
    """
    text = kepware.strip()
    key = text.lower()
    if key in ("", "default"):
        return None
    if text in OUR_TYPES:
        return text
    if key in KEPWARE_TYPES and text != key:
        return KEPWARE_TYPES[key]
    if key.endswith("array"):
        raise ValueError(f"data type {kepware!r}: arrays are not supported; import one tag per element")
    if key in _REFUSED_TYPES:
        raise ValueError(f"data type {kepware!r}: {_REFUSED_TYPES[key]}")
    close = difflib.get_close_matches(key, [*OUR_TYPES, *KEPWARE_TYPES], n=1, cutoff=0.6)
    hint = f" — did you mean {KEPWARE_TYPES.get(close[0], close[0])}?" if close else ""
    raise ValueError(
        f"unknown data type {kepware!r}{hint} (Kepware: Boolean, Short, Word, Long, DWord, LLong, QWord, Float, "
        f"Double, String; or ours: {', '.join(OUR_TYPES)})"
    )


def _map_address(text: str) -> tuple[str, int | None, str | None]:
    """(our address, string length in characters or None, 'H'/'L' or None); raises ValueError."""
    raw = text.strip()
    if "[" in raw:
        raise ValueError(f"address {raw!r} is an array; arrays are not supported, import one tag per element")
    m = _KEPWARE_ADDRESS.match(raw)
    if m and (len(m.group(2)) < 4 or m.group(4)):
        digits = m.group(1) + m.group(2).rjust(4, "0") if len(m.group(2)) < 4 else m.group(1) + m.group(2)
        if m.group(4):  # string: .length then H (high byte first) or L
            return digits, int(m.group(3)), m.group(4).upper()
        address = digits + (f".{m.group(3)}" if m.group(3) else "")
        parse_address(address)
        return address, None, None
    parse_address(raw)  # Kepware's 5/6-digit forms and bits are ours too, and so are 4x0001 / hr:0
    return raw, None, None


def _convert(
    row: dict[str, str], line: int, *, writable: bool, byte_order: str, fix_names: bool, seen: dict[str, int]
) -> ImportedTag:
    exported = (row.get("name") or "").strip()
    if not exported:
        raise RowError(line, "", "empty Tag Name")
    name = exported
    if not _NAME_RE.match(name) or len(name) > 64:
        if not fix_names:
            raise RowError(
                line,
                exported,
                f"tag names may hold letters, digits, '_', '-' and '.' only (max 64); "
                f"rename it, e.g. {suggest_name(name)!r}, or import with --fix-names",
            )
        name = suggest_name(name)
    if name in seen:
        raise RowError(line, exported, f"duplicate tag name {name!r} (first at line {seen[name]})")

    comments: list[str] = []
    try:
        address, chars, string_order = _map_address(row.get("address") or "")
        type_ = _map_type(row.get("type") or "")
    except (AddressError, ValueError) as exc:
        raise RowError(line, exported, str(exc)) from None
    ref = parse_address(address)
    if type_ is None:
        type_ = "bit" if ref.bit is not None else ("string" if chars else _DEFAULT_TYPE[ref.table])
    if type_ == "bool" and ref.bit is not None:
        type_ = "bit"
    if chars is not None and type_ != "string":
        raise RowError(
            line,
            exported,
            f"address {row.get('address', '').strip()!r} is a string address but the "
            f"data type is {row.get('type', '').strip()!r}",
        )

    fields: dict[str, Any] = {"name": name, "address": address, "type": type_}
    if type_ == "string":
        if chars is None:
            raise RowError(
                line,
                exported,
                "a String needs a string address such as 400001.20H "
                "(20 characters, H high byte first or L low byte first)",
            )
        fields["length"] = (chars + 1) // 2
        if string_order == "L":
            fields["byte_order"] = "BADC"
        if chars % 2:
            comments.append(f"Kepware read {chars} characters; the gateway reads whole registers ({fields['length']})")
    elif REGISTERS.get(type_, 1) > 1 and byte_order != "ABCD":
        fields["byte_order"] = byte_order

    scaling = (row.get("scaling") or "").strip().lower()
    if scaling in ("linear", "1"):
        rl, rh = _number(row, "raw_low", line, exported), _number(row, "raw_high", line, exported)
        sl, sh = _number(row, "scaled_low", line, exported), _number(row, "scaled_high", line, exported)
        if rh == rl:
            raise RowError(line, exported, f"linear scaling with Raw Low = Raw High ({rl:g}) cannot be mapped")
        scale = (sh - sl) / (rh - rl)
        offset = sl - rl * scale
        if (row.get("negate") or "").strip().lower() in ("1", "true", "yes"):
            scale, offset = -scale, -offset
        fields["scale"] = float(f"{scale:.12g}")
        if offset:
            fields["offset"] = float(f"{offset:.12g}")
        if (row.get("clamp_low") or "").strip() in ("1",) or (row.get("clamp_high") or "").strip() in ("1",):
            comments.append(f"Kepware clamped the value to {sl:g}..{sh:g}; the gateway does not clamp")
    elif scaling in ("square root", "squareroot", "2"):
        raise RowError(line, exported, "Square Root scaling is not supported (only Linear maps to scale/offset)")
    elif scaling not in ("", "none", "0"):
        raise RowError(line, exported, f"unknown Scaling {row.get('scaling')!r} (None, Linear)")
    elif (row.get("negate") or "").strip().lower() in ("1", "true", "yes"):
        fields["scale"] = -1.0

    unit = (row.get("unit") or "").strip()
    if unit:
        fields["unit"] = unit
    description = (row.get("description") or "").strip()
    if description:
        fields["description"] = description
    if name != exported:
        comments.append(f"Kepware name: {exported}")

    access = re.sub(r"[\s/]", "", (row.get("access") or "")).lower()
    if "w" in access:
        if writable:
            fields["writable"] = True
        else:
            comments.append("writable in Kepware (Client Access R/W); writes are off: add writable: true to allow them")

    try:
        ModbusTag(**fields)
    except ValidationError as exc:
        why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise RowError(line, exported, why) from None
    seen[name] = line
    return ImportedTag(line, fields, comments)


def import_csv(
    data: bytes, *, writable: bool = False, byte_order: str = "ABCD", fix_names: bool = False
) -> ImportResult:
    """Convert a Kepware CSV export (the file's bytes) into tags and row errors (see the module docstring).

    Raises :class:`NotKepwareCsv` when the data is not such a file.
    """
    text = _decode(data)
    if not text.strip():
        raise NotKepwareCsv("the file is empty")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text.splitlines()[0]))
    try:
        heading = next(reader)
    except csv.Error as exc:
        raise NotKepwareCsv(f"not a CSV file: {exc}") from None
    columns = {i: _COLUMNS[_norm(h)] for i, h in enumerate(heading) if _norm(h) in _COLUMNS}
    missing = [label for key, label in (("name", "Tag Name"), ("address", "Address")) if key not in columns.values()]
    if missing:
        raise NotKepwareCsv(
            f"the first line is not a Kepware tag heading: no {' or '.join(missing)} column "
            f"(found: {', '.join(h.strip() for h in heading[:8]) or 'nothing'})"
        )

    result = ImportResult([], [])
    seen: dict[str, int] = {}
    line = reader.line_num + 1
    try:
        for record in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            row = {columns[i]: cell for i, cell in enumerate(record) if i in columns}
            try:
                tag = _convert(row, start, writable=writable, byte_order=byte_order, fix_names=fix_names, seen=seen)
            except RowError as err:
                result.errors.append(err)
                continue
            result.tags.append(tag)
            if REGISTERS.get(tag.fields["type"], 1) > 1:
                result.multi_register = True
    except csv.Error as exc:
        raise NotKepwareCsv(f"line {line}: not a CSV file: {exc}") from None
    return result
