"""A serial port read and written from the asyncio loop, without a thread and without blocking.

Why ``loop.add_reader`` and not a reader thread: pyserial opens the tty ``O_NONBLOCK`` on POSIX, so the
loop can wait for it like for a socket. No thread per port, no queue between a thread and the loop,
cancellation (the engine's timeouts) takes effect at once, and it works the same for real ttys
(``/dev/ttyUSB0``, ``/dev/ttyAMA0``) and ptys. Only ``open()`` runs in a worker thread: opening a USB
serial adapter and setting its termios can take tens of milliseconds in the kernel driver. Linux/POSIX only
(the Windows proactor loop has no ``add_reader`` for serial handles).
"""

from __future__ import annotations

import asyncio
import collections
import os
import termios
import time

import serial

from drivers.serial_io import open_in_thread
from drivers.serial_line.config import SerialLineSource
from drivers.serial_line.framing import LineCounters, LineFramer
from drivers.serial_line.parse import ERR_OVERLONG, ERR_PARTIAL, LineRejected
from gateway.driver import DeviceUnavailable

#: ``(ts_ns, line)`` for a complete line (terminator removed), or a rejected fragment (overlong, partial).
Item = tuple[int, bytes] | LineRejected

_READ_SIZE = 4096
#: Items held for a consumer that does not take them (poll mode between polls); older ones are dropped.
MAX_ITEMS = 1024


class SerialPort:
    """One open serial port: received bytes are cut into lines as they arrive; :meth:`next` hands them out.

    Single consumer (the source task). After the port fails (closed, unplugged, I/O error) every call
    raises :class:`DeviceUnavailable`; the owner closes it and opens a new one.
    """

    def __init__(self, source: SerialLineSource, counters: LineCounters) -> None:
        self.source = source
        self.counters = counters
        self.framer = LineFramer(source.terminator_bytes, source.max_line, counters)
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._items: collections.deque[Item] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: DeviceUnavailable | None = None
        self._last_rx = 0.0

    # -- open / close ---------------------------------------------------------------------------------

    def _open_blocking(self) -> serial.Serial:
        s = self.source
        ser = serial.Serial(
            s.port, s.baudrate, bytesize=s.bytesize, parity=s.parity, stopbits=s.stopbits,
            timeout=0, write_timeout=0, exclusive=True,
        )  # fmt: skip
        try:
            # pyserial's timeout=0 sets VMIN=0, where a read of an idle tty returns b"" like end of file.
            # VMIN=1 with O_NONBLOCK makes an idle read EAGAIN, so b"" only means a hung-up (removed) port.
            attrs = termios.tcgetattr(ser.fileno())
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
            termios.tcsetattr(ser.fileno(), termios.TCSANOW, attrs)
        except BaseException:
            ser.close()
            raise
        return ser

    async def open(self) -> None:
        """Open and configure the port (in a worker thread), then watch it from the loop."""
        loop = asyncio.get_running_loop()
        try:
            ser = await open_in_thread(self._open_blocking)
        except (serial.SerialException, OSError, ValueError, termios.error) as e:
            raise DeviceUnavailable(f"cannot open {self.source.port}: {_reason(e)}") from None
        self._serial, self._fd, self._loop = ser, ser.fileno(), loop
        self._last_rx = loop.time()
        loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        """Stop watching and close the port; idempotent, never raises."""
        ser, self._serial = self._serial, None
        if ser is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        try:
            ser.close()
        except (OSError, serial.SerialException):
            pass
        if self._error is None:
            self._error = DeviceUnavailable(f"{self.source.port} is closed")
        self._wake()

    # -- receiving --------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(f"read from {self.source.port} failed: {e.strerror or e}")
            return
        if not data:
            self._fail(f"{self.source.port} was closed or removed (end of file)")
            return
        assert self._loop is not None
        self._last_rx = self._loop.time()
        ts = time.time_ns()
        overlong = self.counters.overlong
        lines = self.framer.feed(data)
        for _ in range(self.counters.overlong - overlong):
            self._push(LineRejected(ERR_OVERLONG, f"line longer than max_line ({self.source.max_line} bytes)"))
        for line in lines:
            self._push((ts, line))
        self._wake()

    def _push(self, item: Item) -> None:
        if len(self._items) >= MAX_ITEMS:
            self._items.popleft()
            self.counters.overflow += 1
        self._items.append(item)

    def _fail(self, text: str) -> None:
        self._error = DeviceUnavailable(text)
        if self._loop is not None and self._fd >= 0 and self._serial is not None:
            self._loop.remove_reader(self._fd)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, deadline: float | None = None) -> Item | None:
        """The next complete line or rejected fragment, oldest first; ``None`` once ``deadline`` (loop time)
        passes. An unfinished line whose bytes stop for ``char_timeout`` comes out as a partial rejection.
        Raises :class:`DeviceUnavailable` when the port failed (after the items received before it)."""
        loop = asyncio.get_running_loop()
        gap = self.source.char_timeout
        while True:
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                raise self._error
            now = loop.time()
            wait = None if deadline is None else deadline - now
            if gap is not None and self.framer.holding:
                gap_end = self._last_rx + gap
                if gap_end <= now:
                    n = self.framer.drop_partial()
                    if n:
                        return LineRejected(ERR_PARTIAL, f"{n} bytes without terminator, then {gap:g} s of silence")
                    continue
                wait = gap_end - now if wait is None else min(wait, gap_end - now)
            if wait is not None and wait <= 0:
                return None
            self._waiter = loop.create_future()
            await asyncio.wait([self._waiter], timeout=wait)

    def discard_pending(self) -> int:
        """Poll mode, before sending a command: read what the OS holds and throw away every line and
        fragment received so far (counted as unsolicited / partial). Returns the lines discarded."""
        if self._error is None and self._serial is not None:
            for _ in range(64):  # bounded: a device that never stops talking cannot keep us here
                before = self.counters.bytes_in
                self._on_readable()
                if self.counters.bytes_in == before:
                    break
        lines = sum(1 for item in self._items if not isinstance(item, LineRejected))
        self.counters.unsolicited += lines
        self._items.clear()
        self.framer.drop_partial()
        if self._error is not None:
            raise self._error
        return lines

    # -- sending ------------------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send ``data`` completely; waits (on the loop) while the OS buffer is full."""
        if self._error is not None:
            raise self._error
        assert self._loop is not None
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._fail(f"write to {self.source.port} failed: {e.strerror or e}")
                raise self._error from None  # type: ignore[misc]
            view = view[n:]
            if view:
                writable: asyncio.Future[None] = self._loop.create_future()
                self._loop.add_writer(self._fd, _resolve, writable)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self._fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "exclusively lock" in text:
        return "port is in use (another program or asset holds its lock)"
    # pyserial: "[Errno 2] could not open port /dev/ttyUSB9: [Errno 2] No such file or directory: '/dev/ttyUSB9'"
    if "] " in text:
        text = text.rsplit("] ", 1)[-1]
    return text or type(exc).__name__
