"""A fault no real part here produces, on a real socket: a Modbus TCP device that resets every connection.

``FakeModbus("reset")`` is the one fake the fault suite keeps; every other device is the bundled simulator
(``faultkit.plc``), behind the TCP proxy where it must hang.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from helpers import free_port


class FakeModbus:
    """Resets (RST) every TCP connection as soon as it is accepted; ``connections`` counts them."""

    def __init__(self, kind: str = "reset") -> None:
        if kind != "reset":
            raise ValueError("only 'reset' is faked; use faultkit.plc() (and the TCP proxy) for the others")
        self.kind = kind
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeModbus:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
