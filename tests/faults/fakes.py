"""Misbehaving and minimal Modbus TCP devices on real sockets, for the fault-injection tests.

``FakeModbus(kind)``: ``"ok"`` answers reads of holding registers (register i holds ``(i + reads) % 65536``,
so values change on every read), ``"hung"`` accepts and never answers, ``"reset"`` resets every connection
at once, ``"exceptions"`` answers every request with exception 2 (illegal data address).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from helpers import free_port


class FakeModbus:
    def __init__(self, kind: str = "ok", registers: int = 1000) -> None:
        self.kind = kind
        self.port = free_port()
        self.requests = 0
        self.connections = 0
        self.registers = registers
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> FakeModbus:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.kind == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        self._writers.add(writer)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                if self.kind == "hung":
                    continue
                fc = pdu[0]
                if self.kind == "exceptions" or fc not in (3, 4):
                    body = bytes([fc | 0x80, 2])
                else:
                    start, count = struct.unpack(">HH", pdu[1:5])
                    regs = [(start + i + self.requests) % 65536 for i in range(count)]
                    body = bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
        self._writers.discard(writer)
