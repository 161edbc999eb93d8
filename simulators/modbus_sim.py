"""A Modbus TCP PLC serving the plant's ``modbus`` point map.

The simulator keeps the four Modbus tables as NumPy arrays (its *image*): holding and input registers as
uint16, coils and discrete inputs as booleans. Each plant update encodes the points whose value changed
into the image (:mod:`simulators.codec`); bits of one register are merged, never clobbered.

The server is pymodbus' :class:`~pymodbus.server.ModbusTcpServer` on a :class:`~pymodbus.simulator.SimDevice`
(the current datastore API; ``ModbusDeviceContext`` / ``ModbusServerContext`` are deprecated in 3.16). The
device has four non-shared blocks of exactly the configured table sizes, so a read outside a table answers
exception 2 (illegal data address) like a real PLC. Its ``action`` hook runs on every request: it copies
the requested range from the image into pymodbus' block (reads) or client writes into the image (writes),
so the image is the single source of truth.

Fault knob ``answer_fault`` (plant file ``modbus.answer_fault``, or the attribute, changeable while running):
read answers leave the server changed so that they no longer match their request, for the driver's answer
checks; ``answer_fault_rate`` is the fraction of read answers changed (seeded by the plant's ``seed``):

- ``other_function``: the other table's contents with its function code (FC4 for FC3, FC3 for FC4, FC2 for
  FC1, FC1 for FC2), as a server that mixes up the tables sends;
- ``transaction_id_zero``: MBAP transaction id 0 and marker values (0xDEAD words, 0x5A bit bytes), like
  a foreign or stale answer; ``wrong_unit``: unit id + 1;
- ``extra_register``: a marker word 0xDEAD before the registers (one register more than asked for);
- ``odd_byte_count``: the last byte of a register answer dropped;
- ``bits_byte_count_high``: a marker byte 0x5A before the bits; ``bits_byte_count_low``: the last byte dropped.

Writes from clients or :meth:`ModbusSimulator.write_registers` land in the image and stay until the point's
signal produces a different value (constants: until :meth:`ModbusSimulator.set`). To pin a point, use
``set(name, value)``; ``release(name)`` makes it follow its signal again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymodbus.exceptions import ModbusIOException
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.transaction import TransactionManager
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.addressing import TABLE_LABEL
from simulators.codec import encode_number, encode_string, raw_value
from simulators.config import ModbusPoint, ModbusSection
from simulators.plant import Plant
from simulators.signals import Value

log = logging.getLogger(__name__)

_FC_TABLE = {1: "co", 5: "co", 15: "co", 2: "di", 4: "ir", 3: "hr", 6: "hr", 16: "hr", 22: "hr", 23: "hr"}
_DEFAULTS: dict[str, Value] = {"string": "", "bool": False, "bit": False}


class _PipelinedHandler(ServerRequestHandler):
    """pymodbus's connection handler, serving every request a chunk of received bytes holds, in order.

    pymodbus 3.16 decodes one request per chunk and leaves the rest in its buffer until more bytes come, so
    a client with several requests in flight (Modbus TCP allows it; the gateway's ``max_in_flight``) would
    wait for a timeout. Real PLCs answer them one after another; so does this simulator.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self._serving: asyncio.Task[None] | None = None

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        # the request being served keeps its last_pdu: handle_request reads it across an await
        current = (self.last_pdu, self.last_addr)
        used = 0
        try:
            while used < len(data):
                try:
                    n = TransactionManager.callback_data(self, data[used:], addr)
                except ModbusIOException:  # pymodbus's own answer to an undecodable request
                    self.last_pdu = None
                    return used + ServerRequestHandler.callback_data(self, data[used:], addr)
                if not n:
                    break
                used += n
                if self.last_pdu is not None:
                    self._queue.append((self.last_pdu, self.last_addr))
        finally:
            self.last_pdu, self.last_addr = current
        if self._queue and self._serving is None:
            self._serving = asyncio.get_running_loop().create_task(self._serve())
        return used

    async def _serve(self) -> None:
        try:
            while self._queue:
                self.last_pdu, self.last_addr = self._queue.popleft()
                await self.handle_request()
        finally:
            self._serving = None


class _Server(ModbusTcpServer):
    def callback_new_connection(self) -> _PipelinedHandler:
        return _PipelinedHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


@dataclass(eq=False)
class _Point:
    cfg: ModbusPoint
    source: str | None
    last: Any = field(default=None)


class ModbusSimulator:
    """A Modbus TCP PLC: ``await start()``, ``await stop()`` (restartable on the same port).

    ``plant`` is a :class:`Plant`, a plant file path, or ``None`` for the bundled plant. ``unit`` defaults to
    the plant file's ``modbus.unit``. Addresses of the raw accessors are 0-based offsets in ``table``
    (``'hr'``, ``'ir'``, ``'co'``, ``'di'``).
    """

    def __init__(
        self,
        plant: Plant | str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 5020,
        unit: int | None = None,
        answer_fault: str | None = None,
    ) -> None:
        self.plant = plant if isinstance(plant, Plant) else Plant.load(plant)
        section = self.plant.config.modbus or ModbusSection()
        self.host, self.port = host, port
        self.unit = section.unit if unit is None else unit
        #: kind of mismatched read answer to serve (see the module docstring); ``None``: answer correctly
        self.answer_fault: str | None = answer_fault if answer_fault is not None else section.answer_fault
        self.answer_fault_rate: float = section.answer_fault_rate
        #: read answers changed by ``answer_fault`` so far
        self.faulted_answers = 0
        self._rng = random.Random(self.plant.config.seed)
        self._reads: dict[int, tuple[int, int]] = {}  # transaction id -> (start, count) of a read in flight
        self._regs = {t: np.zeros(section.table_size(t), dtype=np.uint16) for t in ("hr", "ir")}
        self._bits = {t: np.zeros(section.table_size(t), dtype=np.bool_) for t in ("co", "di")}
        self._points = {p.name: _Point(p, p.signal) for p in section.points}
        self._overrides: dict[str, Value] = {}
        self._server: ModbusTcpServer | None = None
        self._apply(self.plant.values)

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen on ``host:port``; raises ``OSError`` when the port cannot be bound."""
        if self._server is not None:
            return
        device = SimDevice(
            id=self.unit,
            simdata=(
                [SimData(0, values=[False] * self._bits["co"].size, datatype=DataType.BITS)],
                [SimData(0, values=[False] * self._bits["di"].size, datatype=DataType.BITS)],
                [SimData(0, values=[0] * self._regs["hr"].size, datatype=DataType.REGISTERS)],
                [SimData(0, values=[0] * self._regs["ir"].size, datatype=DataType.REGISTERS)],
            ),
            action=self._on_request,
        )
        server = _Server(device, address=(self.host, self.port), trace_packet=self._outgoing)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            await server.shutdown()
            raise OSError(f"Modbus simulator cannot listen on {self.host}:{self.port} (port in use?)") from exc
        self._server = server
        self._apply(self.plant.values)
        self.plant.attach(self._on_plant_update)
        log.info("Modbus TCP simulator listening on %s:%d (unit %d)", self.host, self.port, self.unit)

    async def stop(self) -> None:
        """Close the listening socket and every client connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        await self.plant.detach(self._on_plant_update)
        await server.shutdown()
        log.info("Modbus TCP simulator on %s:%d stopped", self.host, self.port)

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- values ---------------------------------------------------------------------------------------------

    @property
    def point_names(self) -> list[str]:
        return list(self._points)

    def set(self, name: str, value: Value) -> None:
        """Pin point ``name`` at ``value`` (written at once) until :meth:`release`.

        A plant output name that is not a point name overrides the plant output instead (all points and
        simulators bound to it follow). Raises ``KeyError`` for unknown names, ``ValueError`` for a value
        the point's type cannot hold.
        """
        point = self._points.get(name)
        if point is None:
            for bound in self._points.values():
                if bound.source == name:
                    self._words(bound.cfg, value, strict=True)  # refuse before the plant takes it
            self.plant.set(name, value)
            self._apply(self.plant.values)
            return
        self._write_point(point, value, strict=True)
        self._overrides[name] = value

    def release(self, name: str) -> None:
        """Undo :meth:`set`: the point (or plant output) follows its signal again, from now on."""
        point = self._points.get(name)
        if point is None:
            self.plant.release(name)
        else:
            self._overrides.pop(name, None)
            point.last = None
        self._apply(self.plant.values)

    def value_of(self, name: str) -> Value:
        """The engineering value point ``name`` currently serves (override, signal or constant)."""
        return self._value(self._points[name], self.plant.values)

    def _value(self, point: _Point, values: Mapping[str, Value]) -> Value:
        if point.cfg.name in self._overrides:
            return self._overrides[point.cfg.name]
        if point.source is not None:
            return values[point.source]
        return point.cfg.value if point.cfg.value is not None else _DEFAULTS.get(point.cfg.type, 0)

    def _apply(self, values: Mapping[str, Value]) -> None:
        for point in self._points.values():
            value = self._value(point, values)
            if point.last is not None and type(point.last) is type(value) and point.last == value:
                continue
            self._write_point(point, value, strict=False)

    async def _on_plant_update(self, values: Mapping[str, Value]) -> None:
        self._apply(values)

    @staticmethod
    def _words(p: ModbusPoint, value: Value, *, strict: bool) -> np.ndarray | None:
        """Registers of a register value (``None`` for bool / bit); ``ValueError`` if it cannot be encoded."""
        if p.type in ("bool", "bit"):
            return None
        if p.type == "string":
            return encode_string(str(value), p.length or 0, p.byte_order, strict=strict)
        return encode_number(p.type, raw_value(p.type, value, p.scale, p.offset, strict=strict), p.byte_order)

    def _write_point(self, point: _Point, value: Value, *, strict: bool) -> None:
        p, addr = point.cfg, point.cfg.address
        words = self._words(p, value, strict=strict)
        if words is not None:
            self._regs[addr.table][addr.offset : addr.offset + words.size] = words
        elif p.type == "bool":
            self._bits[addr.table][addr.offset] = bool(value)
        else:
            mask = np.uint16(1 << (addr.bit or 0))
            regs = self._regs[addr.table]
            regs[addr.offset] = (regs[addr.offset] & ~mask) | (mask if value else np.uint16(0))
        point.last = value

    # -- raw access -----------------------------------------------------------------------------------------

    def _table(self, table: str, address0: int, count: int) -> np.ndarray:
        image: np.ndarray | None = self._regs.get(table)  # uint16 registers or bool bits
        if image is None:
            image = self._bits.get(table)
        if image is None:
            raise ValueError(f"unknown table {table!r}; use 'hr', 'ir', 'co' or 'di'")
        if address0 < 0 or count < 0 or address0 + count > image.size:
            raise ValueError(
                f"{TABLE_LABEL[table]}s {address0}..{address0 + count - 1} are outside the table (0..{image.size - 1})"
            )
        return image

    def write_registers(self, table: str, address0: int, words: Sequence[int]) -> None:
        """Write raw 16-bit words into ``'hr'`` or ``'ir'`` from 0-based ``address0``."""
        if table not in self._regs:
            raise ValueError(f"write_registers needs table 'hr' or 'ir', not {table!r} (use write_bits)")
        data = np.asarray(words, dtype=np.int64)
        if data.size and (data.min() < 0 or data.max() > 0xFFFF):
            raise ValueError("register words must be in 0..65535")
        self._table(table, address0, data.size)[address0 : address0 + data.size] = data

    def write_bits(self, table: str, address0: int, bits: Sequence[bool]) -> None:
        """Write coils (``'co'``) or discrete inputs (``'di'``) from 0-based ``address0``."""
        if table not in self._bits:
            raise ValueError(f"write_bits needs table 'co' or 'di', not {table!r} (use write_registers)")
        data = np.asarray(bits, dtype=np.bool_)
        self._table(table, address0, data.size)[address0 : address0 + data.size] = data

    def read_registers(self, table: str, address0: int, count: int) -> list[int] | list[bool]:
        """Current raw contents: words for ``'hr'``/``'ir'``, booleans for ``'co'``/``'di'``."""
        return self._table(table, address0, count)[address0 : address0 + count].tolist()

    def read_bits(self, table: str, address0: int, count: int) -> list[bool]:
        """Current coils (``'co'``) or discrete inputs (``'di'``)."""
        if table not in self._bits:
            raise ValueError(f"read_bits needs table 'co' or 'di', not {table!r}")
        return self._table(table, address0, count)[address0 : address0 + count].tolist()

    # -- answer faults --------------------------------------------------------------------------------------

    def _outgoing(self, sending: bool, packet: bytes) -> bytes:
        """pymodbus's ``trace_packet``: note read requests, change their answers as ``answer_fault`` says."""
        if len(packet) < 9 or packet[7] not in (1, 2, 3, 4):
            return packet
        tid, _pid, _length, unit, function = struct.unpack_from(">HHHBB", packet)
        if not sending:
            if len(packet) >= 12:
                self._reads[tid] = struct.unpack_from(">HH", packet, 8)
            return packet
        read = self._reads.pop(tid, None)
        fault = self.answer_fault
        if fault is None or (self.answer_fault_rate < 1.0 and self._rng.random() >= self.answer_fault_rate):
            return packet
        data = packet[9:]
        bits = function in (1, 2)
        if fault == "other_function" and read is not None:
            function = {1: 2, 2: 1, 3: 4, 4: 3}[function]
            start, count = read
            if bits:  # the other bit table's contents: what a server that mixed up the tables sends
                other_bits = self._bits["di" if function == 2 else "co"]
                data = np.packbits(np.resize(other_bits[start:], count), bitorder="little").tobytes()
            else:
                other_regs = self._regs["ir" if function == 4 else "hr"]
                data = np.resize(other_regs[start:], count).astype(">u2").tobytes()
        elif fault == "transaction_id_zero":
            tid = 0
            data = bytes((0x5A,)) * len(data) if bits else b"\xde\xad" * (len(data) // 2)
        elif fault == "wrong_unit":
            unit = (unit + 1) % 256
        elif fault == "extra_register" and not bits:
            data = b"\xde\xad" + data
        elif fault == "odd_byte_count" and not bits:
            data = data[:-1]
        elif fault == "bits_byte_count_high" and bits:
            data = b"\x5a" + data
        elif fault == "bits_byte_count_low" and bits:
            data = data[:-1]
        else:
            return packet  # this fault does not apply to this table
        self.faulted_answers += 1
        return struct.pack(">HHHBBB", tid, 0, len(data) + 3, unit, function, len(data)) + data

    # -- pymodbus hook --------------------------------------------------------------------------------------

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        """Sync pymodbus' block with the image for the requested range (see the module docstring).

        For coils / discrete inputs pymodbus passes the bit ``address`` but ``count`` in 16-bit words of its
        packed block (bit ``n`` is bit ``n % 16`` of word ``n // 16``).
        """
        table = _FC_TABLE[function_code]
        if table in self._bits:
            image = self._bits[table]
            if set_values:
                image[address : address + len(set_values)] = np.asarray(set_values, dtype=np.bool_)
            first = address // 16
            packed = np.packbits(image[first * 16 : (first + count) * 16], bitorder="little").view("<u2")
            registers[first - start_address : first - start_address + count] = packed.tolist()
            return None
        regs = self._regs[table]
        if set_values:
            regs[address : address + len(set_values)] = np.asarray(set_values, dtype=np.uint16)
        registers[address - start_address : address - start_address + count] = regs[address : address + count].tolist()
        return None
