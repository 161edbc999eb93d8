"""Byte pipes under the RTU bus arbiter: a serial port (pyserial) or a TCP socket (RTU over TCP).

A link only moves bytes: :meth:`Link.send` writes a frame, received bytes pile up in :attr:`Link.rx` with
the time of the last arrival, and :meth:`Link.wait_rx` sleeps until more arrive. Nothing blocks the event
loop: the serial port is opened in a worker thread, then read with ``loop.add_reader`` on its
non-blocking file descriptor and written with ``os.write`` (``add_writer`` when the driver's buffer is full).
A link that breaks (USB adapter unplugged, TCP peer gone) sets :attr:`Link.broken` and wakes any waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from abc import ABC, abstractmethod
from typing import Any

from drivers.serial_io import open_in_thread


class Link(ABC):
    """A bidirectional byte stream to a bus; used by one arbiter, which serialises all access."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rx = bytearray()
        #: monotonic time of the last received byte (0 when none yet)
        self.last_rx = 0.0
        #: why the link broke (``None`` while it works)
        self.broken: str | None = None
        self._event = asyncio.Event()

    @abstractmethod
    async def open(self) -> None:
        """Open the port or connection; raises ``OSError`` (with the reason) when that fails."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Write all of ``data``; raises ``OSError`` when the link broke."""

    @abstractmethod
    def close(self) -> None:
        """Release the port or connection. Never raises."""

    def take_rx(self) -> int:
        """Drop every received byte (before a new request); returns how many were dropped."""
        n = len(self.rx)
        self.rx.clear()
        self._event.clear()
        return n

    async def wait_rx(self, timeout: float) -> None:
        """Return when bytes arrive or the link breaks, or after ``timeout`` seconds."""
        if self._event.is_set():
            self._event.clear()
            return
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self._event.wait()
        except TimeoutError:
            pass
        self._event.clear()

    def _received(self, data: bytes) -> None:
        self.rx += data
        self.last_rx = time.monotonic()
        self._event.set()

    def _lost(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        self._event.set()


class SerialLink(Link):
    """A local serial port (``/dev/ttyUSB0``, ``/dev/ttyAMA0``, a pty in tests), opened exclusively."""

    def __init__(self, port: str, *, baudrate: int, bytesize: int, parity: str, stopbits: float) -> None:
        super().__init__(port)
        self.settings = {"baudrate": baudrate, "bytesize": bytesize, "parity": parity, "stopbits": stopbits}
        self._serial: Any = None  # serial.Serial once open (pyserial is imported lazily)
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        import serial  # pyserial; imported here so the TCP-only variant does not need it

        def _open() -> serial.Serial:
            return serial.Serial(
                self.name, timeout=0, write_timeout=0, exclusive=True, **self.settings
            )

        try:
            self._serial = await open_in_thread(_open)
        except (serial.SerialException, ValueError, OSError) as exc:
            hint = ""
            if self.settings["parity"] != "N" and os.path.realpath(self.name).startswith("/dev/pts/"):
                hint = " (a pseudo-terminal, e.g. the simulator's, has no parity: use parity: N)"
            raise OSError(f"cannot open serial port {self.name}: {exc}{hint}") from exc
        self._fd = self._serial.fileno()
        os.set_blocking(self._fd, False)
        self._serial.reset_input_buffer()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: adapter unplugged, pty closed
            self._stop_reading()
            self._lost(f"serial port {self.name} failed: {exc.strerror or exc}")
            return
        if not data:
            self._stop_reading()
            self._lost(f"serial port {self.name} was closed")
            return
        self._received(data)

    async def send(self, data: bytes) -> None:
        if self.broken is not None or self._fd is None:
            raise OSError(self.broken or f"serial port {self.name} is not open")
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._lost(f"serial port {self.name} failed: {exc.strerror or exc}")
                raise OSError(self.broken) from exc
            view = view[written:]
            if view:
                await self._writable()

    async def _writable(self) -> None:
        assert self._loop is not None and self._fd is not None
        ready = self._loop.create_future()
        self._loop.add_writer(self._fd, ready.set_result, None)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._fd)

    def _stop_reading(self) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)

    def close(self) -> None:
        self._stop_reading()
        self._lost("closed")
        port, self._serial, self._fd = self._serial, None, None
        if port is not None:
            with contextlib.suppress(Exception):  # closing a port that already failed must not raise
                port.close()


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, link: TcpLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(f"connection to {self.link.name} lost" + (f": {exc}" if exc else " (closed by peer)"))


class TcpLink(Link):
    """A TCP connection to a serial-to-Ethernet converter that passes RTU frames through unchanged."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port}")
        self.host, self.port = host, port
        self._transport: asyncio.Transport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(lambda: _TcpProtocol(self), self.host, self.port)
        except OSError as exc:
            raise OSError(f"cannot connect to {self.name}: {exc.strerror or exc}") from exc
        self._transport = transport

    async def send(self, data: bytes) -> None:
        if self.broken is not None or self._transport is None or self._transport.is_closing():
            raise OSError(self.broken or f"connection to {self.name} is closed")
        self._transport.write(data)

    def close(self) -> None:
        transport, self._transport = self._transport, None
        self._lost("closed")
        if transport is not None:
            transport.close()
