"""Modbus RTU slaves on a pseudo-terminal (or RTU frames over TCP), with fault knobs for the tests.

One :class:`ModbusRtuSimulator` plays every slave on one RS-485 line: a dict of unit id -> :class:`RtuSlave`
(four Modbus tables each). It parses requests from the master with its own CRC and framing code (never the
gateway's, so a framing bug cannot cancel out), answers FC 1-6, 15 and 16, and ignores frames with a bad CRC
or for unit ids it does not play, like real slaves on a shared line.

Fault knobs, per unit, changeable while running (:class:`Faults`): ``silent`` (never answers), ``crc_errors``
(fraction of answers whose CRC is corrupted), ``stray`` (bytes sent just before each answer), ``delay``
(seconds before answering), ``truncate`` (fraction of answers cut short), ``exception`` (answer every request
with this exception code), ``ignore_after_other`` (seconds; behave like a libmodbus slave: after a request for
another unit that no slave on the line answers, the next frame that arrives within this window is taken for
that answer and ignored, even a request for this unit; libmodbus's default window is its 0.5 s response
timeout). Fractions use a seeded random generator, so a run is repeatable.

Slaves are plain arrays (:meth:`RtuSlave.blank`) for the tests, or the point map of a plant file
(:meth:`RtuSlave.from_plant`) for ``iiot-gateway simulate --rtu``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simulators.modbus_sim import ModbusSimulator
from simulators.plant import Plant
from simulators.pty_pair import PtyPair

log = logging.getLogger(__name__)


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS, bit by bit (the driver uses a table; two implementations catch each other's bugs)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


@dataclass
class Faults:
    """Misbehaviour of one simulated slave (see the module docstring)."""

    silent: bool = False
    crc_errors: float = 0.0
    stray: bytes = b""
    delay: float = 0.0
    truncate: float = 0.0
    exception: int | None = None
    ignore_after_other: float = 0.0


class RtuSlave:
    """The four tables of one slave: ``hr``/``ir`` uint16 arrays, ``co``/``di`` bool arrays (0-based)."""

    def __init__(self, hr: np.ndarray, ir: np.ndarray, co: np.ndarray, di: np.ndarray,
                 backing: ModbusSimulator | None = None) -> None:  # fmt: skip
        self.tables: dict[str, np.ndarray] = {"hr": hr, "ir": ir, "co": co, "di": di}
        self.backing = backing

    @classmethod
    def blank(cls, size: int = 1000) -> RtuSlave:
        """A slave with ``size`` zeroed entries in each table."""
        return cls(np.zeros(size, np.uint16), np.zeros(size, np.uint16), np.zeros(size, bool), np.zeros(size, bool))

    @classmethod
    def from_plant(cls, plant: Plant) -> RtuSlave:
        """A slave serving the ``modbus`` point map of ``plant`` (live values once the simulator starts)."""
        sim = ModbusSimulator(plant)
        return cls(sim._regs["hr"], sim._regs["ir"], sim._bits["co"], sim._bits["di"], backing=sim)

    def set_registers(self, table: str, start: int, words: list[int] | np.ndarray) -> None:
        """Write raw 16-bit words into ``'hr'`` or ``'ir'`` from 0-based ``start``."""
        data = np.asarray(words, dtype=np.uint16)
        self.tables[table][start : start + data.size] = data

    def set_bits(self, table: str, start: int, bits: list[bool]) -> None:
        data = np.asarray(bits, dtype=bool)
        self.tables[table][start : start + data.size] = data


_READ_TABLES = {1: "co", 2: "di", 3: "hr", 4: "ir"}


class ModbusRtuSimulator:
    """Every slave on one line: ``await start()`` on a new pty (``.path``) or ``await start_tcp(host, port)``."""

    def __init__(self, slaves: dict[int, RtuSlave], *, seed: int = 1, link: str | None = None) -> None:
        self.slaves = slaves
        self.faults: dict[int, Faults] = {unit: Faults() for unit in slaves}
        self.requests: dict[int, int] = {unit: 0 for unit in slaves}
        #: requests a slave with ``ignore_after_other`` ignored because it still waited for another unit's answer
        self.ignored: dict[int, int] = {unit: 0 for unit in slaves}
        #: unit -> monotonic time until which it takes the next frame for another unit's answer
        self._confirm_until: dict[int, float] = {}
        self.bad_requests = 0
        self._rng = random.Random(seed)
        self._link = link
        self.pty: PtyPair | None = None
        self._server: asyncio.Server | None = None
        self._plant_listeners: list[tuple[Plant, Callable]] = []
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def path(self) -> str:
        """The pty path to put in a config (``port:``); only after :meth:`start`."""
        assert self.pty is not None, "start() first"
        return self.pty.link or self.pty.path

    async def start(self) -> None:
        """Serve on a new pty pair (``self.path``)."""
        self.pty = PtyPair(link=self._link)
        buffer = bytearray()
        fd = self.pty.master_fd

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, OSError):
                return
            buffer.extend(data)
            self._serve(buffer, lambda out: self._write_pty(fd, out))

        asyncio.get_running_loop().add_reader(fd, readable)
        self._attach_plants()

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve RTU frames over TCP (a transparent serial-to-Ethernet converter); returns the port."""

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            buffer = bytearray()
            self._writers.add(writer)
            try:
                while data := await reader.read(4096):
                    buffer.extend(data)
                    self._serve(buffer, writer.write)
            except ConnectionError:
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

        self._server = await asyncio.start_server(client, host, port)
        self._attach_plants()
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for plant, listener in self._plant_listeners:
            await plant.detach(listener)
        self._plant_listeners.clear()
        if self.pty is not None:
            asyncio.get_running_loop().remove_reader(self.pty.master_fd)
            self.pty.close()
            self.pty = None
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # like a converter switched off: every connection drops
                writer.close()
            await self._server.wait_closed()
            self._server = None

    def _attach_plants(self) -> None:
        for slave in self.slaves.values():
            sim = slave.backing
            if sim is not None:
                listener = sim._on_plant_update  # keeps the tables in step with the plant, like the TCP server
                sim.plant.attach(listener)
                self._plant_listeners.append((sim.plant, listener))

    @staticmethod
    def _write_pty(fd: int, data: bytes) -> None:
        try:
            os.write(fd, data)
        except (BlockingIOError, OSError):
            pass  # nobody reads the line: the answer is lost, as on a real bus

    # -- requests -------------------------------------------------------------------------------------------
    def _serve(self, buffer: bytearray, send: Callable[[bytes], object]) -> None:
        while len(buffer) >= 8:
            function = buffer[1]
            if function in (15, 16):
                if len(buffer) < 7:
                    return
                size = 9 + buffer[6]
            else:
                size = 8
            if len(buffer) < size:
                return
            request = bytes(buffer[:size])
            if crc16(request[:-2]) != struct.unpack("<H", request[-2:])[0]:
                self.bad_requests += 1
                del buffer[0]  # resynchronise one byte further
                continue
            del buffer[:size]
            unit = request[0]
            if self._waiting_slaves_take(unit):
                continue
            if unit in self.slaves:
                self.requests[unit] += 1
                self._answer(unit, request[1:-2], send)

    def _waiting_slaves_take(self, unit: int) -> bool:
        """libmodbus-style slaves see a request for ``unit``: True when the one it is for ignores it.

        A slave that waits for another unit's answer takes this frame for it (and ignores it); the answer of
        another slave to that frame then looks like a request for another unit, so it waits again. A slave
        that does not wait starts waiting when the request is for another unit that no slave here answers.
        """
        now = time.monotonic()
        answered = unit in self.slaves and not self.faults[unit].silent
        ignored = False
        for other, faults in self.faults.items():
            if faults.ignore_after_other <= 0:
                continue
            until = self._confirm_until.pop(other, None)
            if until is not None and now < until:
                if other == unit:
                    self.ignored[unit] += 1
                    ignored = True
                elif answered:  # out of step: it will take that unit's answer for a request, and wait again
                    self._confirm_until[other] = now + faults.ignore_after_other
                continue
            if other != unit and not answered:
                self._confirm_until[other] = now + faults.ignore_after_other
        return ignored

    def _answer(self, unit: int, pdu: bytes, send: Callable[[bytes], object]) -> None:
        faults = self.faults[unit]
        if faults.silent:
            return
        body = bytes((unit,)) + (
            self._exception(pdu[0], faults.exception) if faults.exception else self._execute(unit, pdu)
        )
        frame = with_crc(body)
        if faults.crc_errors and self._rng.random() < faults.crc_errors:
            frame = frame[:-1] + bytes((frame[-1] ^ 0x5A,))
        if faults.truncate and self._rng.random() < faults.truncate:
            frame = frame[: max(2, len(frame) - 3)]
        frame = faults.stray + frame
        if faults.delay:
            task = asyncio.get_running_loop().create_task(self._later(faults.delay, send, frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            send(frame)

    @staticmethod
    async def _later(delay: float, send: Callable[[bytes], object], frame: bytes) -> None:
        await asyncio.sleep(delay)
        send(frame)

    @staticmethod
    def _exception(function: int, code: int) -> bytes:
        return bytes((function | 0x80, code))

    def _execute(self, unit: int, pdu: bytes) -> bytes:
        function = pdu[0]
        tables = self.slaves[unit].tables
        if function in _READ_TABLES:
            start, count = struct.unpack(">HH", pdu[1:5])
            table = tables[_READ_TABLES[function]]
            limit = 2000 if function <= 2 else 125
            if not 1 <= count <= limit:
                return self._exception(function, 3)
            if start + count > table.size:
                return self._exception(function, 2)
            values = table[start : start + count]
            if function <= 2:
                data = np.packbits(values.astype(bool), bitorder="little").tobytes()
            else:
                data = values.astype(">u2").tobytes()
            return bytes((function, len(data))) + data
        if function in (5, 6):
            address, value = struct.unpack(">HH", pdu[1:5])
            table = tables["co" if function == 5 else "hr"]
            if address >= table.size:
                return self._exception(function, 2)
            if function == 5:
                if value not in (0x0000, 0xFF00):
                    return self._exception(function, 3)
                table[address] = value == 0xFF00
            else:
                table[address] = value
            return pdu[:5]
        if function in (15, 16):
            start, count = struct.unpack(">HH", pdu[1:5])
            table = tables["co" if function == 15 else "hr"]
            if start + count > table.size:
                return self._exception(function, 2)
            payload = pdu[6:]
            if function == 15:
                bits = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")[:count]
                table[start : start + count] = bits.astype(bool)
            else:
                table[start : start + count] = np.frombuffer(payload, ">u2")[:count]
            return pdu[:5]
        return self._exception(function, 1)
