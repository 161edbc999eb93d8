"""The byte-order probe (``iiot-gateway probe modbus|modbus-rtu``): every way to read a few registers.

Given an address as a manual writes it (``40133``), the probe reads the registers there with the driver
itself — the same client, plan and decoding a tag gets (:mod:`drivers.modbus.decode`) — and lists every
interpretation: type (int16, uint16, int32, uint32, float32, int64, uint64, float64) × byte order
(ABCD, CDAB, BADC, DCBA; 16-bit types have only ABCD and BADC) × address base:

- **base 1**: the address read as written (``40133`` = holding register 132, Modbus numbers are 1-based);
- **base 0**: one register on, as if the manual's number were the 0-based protocol address
  (``40133`` = holding register 133) — the classic off-by-one. For a 0-based address written ``hr:132``
  the other reading is one register back (``hr:131``, as if 132 were 1-based).

With ``expect`` the readings within float32 precision of that value (relative 2**-20) are marked, and so
are integer readings that match after a decimal scale (``x0.1``, ``x0.01``, ``x0.001``). A reading's
``tag`` is the tag line that reads it that way. Each base is one read request of its own, so a base
that runs past the device's table fails alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from drivers.modbus.address import (
    MAX_OFFSET,
    AddressError,
    Table,
    address_text,
    parse_address,
)
from drivers.modbus.base import ModbusDriverBase
from drivers.modbus.config import REGISTERS, ModbusTag
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext, Shared

TYPES = ("int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64")
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
_ORDERS_16 = ("ABCD", "BADC")
#: relative tolerance of a match: a float32 holds 24 significant bits, a typed value has rounding too
MATCH_TOLERANCE = 2.0**-20
SCALES = (1.0, 0.1, 0.01, 0.001)
_TABLE_DIGIT = {Table.HOLDING_REGISTER: "4", Table.INPUT_REGISTER: "3"}

MakeDriver = Callable[[list[ModbusTag]], ModbusDriverBase]


class ProbeError(ValueError):
    """The address cannot be probed (not a register table, a bit, out of range): the message says why."""


@dataclass(frozen=True, slots=True)
class Window:
    """The registers of one address base: ``count`` registers of ``table`` from 0-based ``offset``."""

    base: int  # 1: the address as written is 1-based; 0: one register off
    table: Table
    offset: int
    count: int

    @property
    def address(self) -> str:
        """Our 1-based numeric form of the window's first register (``40134``)."""
        number = self.offset + 1
        return f"{_TABLE_DIGIT[self.table]}{number:04d}" if number <= 9999 else f"{_TABLE_DIGIT[self.table]}{number:05d}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One interpretation of the registers; ``value`` is None when the read failed."""

    base: int
    address: str
    type: str
    byte_order: str
    value: float | None
    text: str
    match: bool = False
    scale: float = 1.0  # the decimal scale that makes the value match (1.0: none)

    @property
    def tag(self) -> str:
        """The tag line that reads this interpretation (``scale`` when the match needed one)."""
        parts = [f'address: "{self.address}"', f"type: {self.type}"]
        if self.byte_order != "ABCD":
            parts.append(f"byte_order: {self.byte_order}")
        if self.scale != 1.0:
            parts.append(f"scale: {self.scale:g}")
        return "{" + ", ".join(parts) + "}"


@dataclass(slots=True)
class ProbeResult:
    """What :func:`probe` read: the windows, the raw words or the error of each, and every reading."""

    windows: list[Window]
    words: dict[int, list[int]]  # base -> raw words
    errors: dict[int, str]  # base -> why its read failed
    readings: list[Reading]

    @property
    def matches(self) -> list[Reading]:
        return [r for r in self.readings if r.match]


def windows_for(address: Any, count: int = 4) -> list[Window]:
    """The windows to read for ``address`` (as written first, then one register off where it exists).

    Raises :class:`ProbeError` for coils, discrete inputs, bits of registers and invalid addresses.
    """
    try:
        text = address_text(address)
        ref = parse_address(text)
    except AddressError as exc:
        raise ProbeError(str(exc)) from None
    if ref.table.is_bits:
        raise ProbeError(f"{text!r} is a {ref.table.label}: the probe reads registers (4xxxx or 3xxxx)")
    if ref.bit is not None:
        raise ProbeError(f"{text!r} is one bit of a register: probe the register ({text.split('.')[0]})")
    if count not in (1, 2, 4):
        raise ProbeError(f"count {count}: a value occupies 1, 2 or 4 registers")
    zero_based = text.lower().startswith(("hr:", "ir:"))
    other = ref.offset - 1 if zero_based else ref.offset + 1
    written = Window(0 if zero_based else 1, ref.table, ref.offset, count)
    if ref.offset + count - 1 > MAX_OFFSET:
        raise ProbeError(f"{text!r}: {count} registers from there run past the last register 65535")
    out = [written]
    if 0 <= other and other + count - 1 <= MAX_OFFSET:
        out.append(Window(1 - written.base, ref.table, other, count))
    return out


def _tags(window: Window) -> list[ModbusTag]:
    where = f"{window.table.value}:{window.offset}"
    tags = [ModbusTag(name=f"w{i}", address=f"{window.table.value}:{window.offset + i}", type="uint16")
            for i in range(window.count)]
    for type_ in TYPES:
        if REGISTERS[type_] > window.count:
            continue
        for order in _ORDERS_16 if REGISTERS[type_] == 1 else ORDERS:
            tags.append(ModbusTag(name=f"{type_}_{order}", address=where, type=type_, byte_order=order))
    return tags


def show(type_: str, value: float) -> str:
    """A value as the gateway publishes it: float32 at float32 precision, integers without a fraction."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if type_ in ("float32", "float64"):
        v: np.floating[Any] = np.float32(value) if type_ == "float32" else np.float64(value)
        if v == 0 or 1e-4 <= abs(v) < 1e9:
            return np.format_float_positional(v, unique=True, trim="-")
        return np.format_float_scientific(v, unique=True, trim="-")
    return str(int(value))


def matching_scale(type_: str, value: float, expect: float) -> float | None:
    """The scale (1, or 0.1 / 0.01 / 0.001 for integer types) with which ``value`` reads ``expect``, else None."""
    if math.isnan(value):
        return None
    for scale in SCALES if not type_.startswith("float") else (1.0,):
        if math.isclose(value * scale, expect, rel_tol=MATCH_TOLERANCE, abs_tol=1e-9):
            return scale
    return None


async def probe(make_driver: MakeDriver, windows: Sequence[Window], expect: float | None = None,
                timeout: float = 2.0) -> ProbeResult:
    """Read every window with a driver from ``make_driver(tags)`` (connect, one read, close) and decode it.

    A window whose read fails (no answer, an exception answer) is reported in ``errors``; the others stand.
    When the device cannot be reached at all, every window gets that error and nothing more is tried.
    """
    result = ProbeResult(list(windows), {}, {}, [])
    for window in windows:
        tags = _tags(window)
        driver = make_driver(tags)
        connected = False
        try:
            async with asyncio.timeout(timeout + 1.0):
                await driver.connect()
                connected = True
                batch = await driver.read()
        except (DeviceUnavailable, TimeoutError) as exc:
            why = str(exc) or f"no answer within {timeout:g}s"
            if not connected:  # the device is not there: the other base would only say so again
                result.errors.update({w.base: why for w in windows if w.base not in result.words})
                break
            result.errors[window.base] = why
            continue
        finally:
            await driver.close()
        bad = np.flatnonzero(batch.quality == Quality.BAD)
        if bad.size:
            result.errors[window.base] = batch.error_text.get(int(batch.errors[bad[0]]), "read failed")
            continue
        result.words[window.base] = [int(v) for v in batch.values[: window.count]]
        for pos in range(window.count, len(tags)):
            tag, value = tags[pos], float(batch.values[pos])
            scale = matching_scale(tag.type, value, expect) if expect is not None else None
            result.readings.append(Reading(window.base, window.address, tag.type, tag.byte_order, value,
                                           show(tag.type, value), scale is not None, scale or 1.0))
    return result


def render(result: ProbeResult, endpoint: str, address: str, expect: float | None) -> str:
    """The table printed by the command: one block per base, matches marked with ``<==``."""
    lines = [f"{endpoint}: {address}"]
    for w in result.windows:
        label = "as written" if w is result.windows[0] else "one register off"
        head = f"base {w.base} ({label}): {w.table.label} {w.offset}..{w.offset + w.count - 1} = {w.address}"
        if w.base in result.errors:
            lines += ["", f"{head}: read failed: {result.errors[w.base]}"]
            continue
        words = " ".join(f"{x:04X}" for x in result.words[w.base])
        lines += ["", f"{head}, registers {words}", f"  {'type':8} {'order':5}  value"]
        for r in result.readings:
            if r.base != w.base:
                continue
            mark = ""
            if r.match:
                mark = "  <== matches" + (f" with scale {r.scale:g}" if r.scale != 1.0 else "")
            lines.append(f"  {r.type:8} {r.byte_order:5}  {r.text}{mark}")
    if expect is not None:
        lines.append("")
        found = result.matches
        if found:
            lines.append(f"{len(found)} reading(s) match {expect:g}; tag lines that read them:")
            lines += [f"  {r.tag}   # base {r.base}" for r in found]
        else:
            lines.append(f"no reading matches {expect:g} (try another --count, unit or address)")
    return "\n".join(lines) + "\n"


def _split_host(target: str) -> tuple[str, int]:
    if target.startswith("["):  # [::1]:502
        host, _, rest = target[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 502
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return target, 502


def main_probe(args: argparse.Namespace) -> int:
    """``iiot-gateway probe``: 0 read (and, with --expect, something matched), 1 no answer or no match, 2 bad args."""
    from pydantic import ValidationError

    try:
        windows = windows_for(args.address, args.count)
        if args.protocol == "modbus":
            from drivers.modbus.config import ModbusTcpSource
            from drivers.modbus.tcp import ModbusTcpDriver

            host, port = _split_host(args.target)
            tcp = ModbusTcpSource(driver="modbus_tcp", host=host, port=port, unit=args.unit, timeout=args.timeout)
            endpoint = f"Modbus TCP {host}:{port} unit {args.unit}"

            def make(tags: list[ModbusTag]) -> ModbusDriverBase:
                return ModbusTcpDriver(tcp, tags, DriverContext.detached("probe", len(tags)))
        else:
            from drivers.modbus.rtu import ModbusRtuDriver
            from drivers.modbus.rtu_config import ModbusRtuSource

            rtu = ModbusRtuSource(driver="modbus_rtu", port=args.target, unit=args.unit, baudrate=args.baudrate,
                                  parity=args.parity, stopbits=args.stopbits, timeout=args.timeout,
                                  response_timeout=min(0.5, args.timeout / 2), retries=1)
            line = f"{rtu.baudrate} {rtu.bytesize}{rtu.parity}{rtu.stopbits}"
            endpoint = f"Modbus RTU {args.target} ({line}) unit {args.unit}"

            bus = Shared()  # every window's driver joins the one arbiter of the port

            def make(tags: list[ModbusTag]) -> ModbusDriverBase:
                return ModbusRtuDriver(rtu, tags, DriverContext.detached("probe", len(tags), shared=bus))
    except ProbeError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print("probe: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
              file=sys.stderr)
        return 2

    result = asyncio.run(probe(make, windows, args.expect, args.timeout))
    if args.json:
        doc = {
            "endpoint": endpoint,
            "address": args.address,
            "windows": [{**asdict(w), "table": w.table.value, "address": w.address,
                         "registers": result.words.get(w.base), "error": result.errors.get(w.base)}
                        for w in result.windows],
            "readings": [{**asdict(r), "tag": r.tag} for r in result.readings],
        }
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(render(result, endpoint, args.address, args.expect))
    if not result.words:
        return 1
    return 1 if args.expect is not None and not result.matches else 0
