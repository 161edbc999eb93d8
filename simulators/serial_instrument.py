"""A serial ASCII instrument on a pseudo-terminal: a weighing scale or a temperature transmitter.

It owns the master end of a :class:`~simulators.pty_pair.PtyPair`; the gateway opens ``path`` as it would
open ``/dev/ttyUSB0``. Poll mode answers every ``command`` it receives with one line; stream mode sends a
line ``rate`` times a second. Lines (terminator ``\\r\\n`` by default)::

    scale:   ST,GS,+0012.345kg          (ST stable / US unstable, gross weight in kg)
    thermo:  T1=+023.45;T2=+019.80;OK   (two channels in degC, status OK / ER)

With ``checksum`` set, ``<separator><hex>`` is appended (covering the line before the separator).
Fault knobs (:class:`InstrumentFaults`, changeable while running): stray noise bytes before a line, lines
cut short (no terminator), wrong checksums, overlong garbage lines, slow replies and total silence.

This module imports neither ``gateway`` nor ``drivers``: its checksums are computed by its own code, so a
bug in the driver cannot be cancelled out by the same bug here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from simulators.pty_pair import PtyPair

Kind = Literal["scale", "thermo"]


def _xor8(data: bytes) -> int:
    return functools.reduce(lambda a, b: a ^ b, data, 0)


def _sum8(data: bytes) -> int:
    return sum(data) % 256


def _lrc(data: bytes) -> int:
    return (256 - sum(data) % 256) % 256


def _crc16_modbus(data: bytes) -> int:
    # imported here: ``iiot-gateway`` builds its CLI with this module's arguments on every command, and the
    # RTU simulator brings pymodbus's server and the plant model (30 MiB, 0.3 s) into ``run`` too
    from simulators.modbus_rtu_sim import crc16

    return crc16(data)


def _crc16_ccitt(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


CHECKSUMS = {"xor8": (_xor8, 2), "sum8": (_sum8, 2), "lrc": (_lrc, 2),
             "crc16_modbus": (_crc16_modbus, 4), "crc16_ccitt": (_crc16_ccitt, 4)}  # fmt: skip


@dataclass
class InstrumentFaults:
    """Probabilities per line (0..1) and switches; the tests flip them while the instrument runs."""

    noise: float = 0.0  # 1-8 random bytes written just before a line
    partial: float = 0.0  # the line is cut somewhere and its terminator never sent
    bad_checksum: float = 0.0  # the checksum digits are wrong (needs ``checksum``)
    overlong: float = 0.0  # a line of ``overlong_bytes`` garbage printable characters, then the terminator
    overlong_bytes: int = 600
    silent: bool = False  # answer nothing, stream nothing
    delay: float = 0.0  # seconds before a poll reply


class SerialInstrument:
    """A scale or temperature transmitter on a pty. ``await start()``, point a config at ``path``, ``await stop()``.

    The reading is in plain attributes: ``weight`` (kg), ``stable`` (scale), ``t1``/``t2`` (degC), ``ok``
    (thermo). ``lines_sent``, ``polls`` and ``dropped`` (bytes the pty would not take) are counted.
    """

    def __init__(
        self,
        kind: Kind = "scale",
        *,
        mode: Literal["poll", "stream"] = "poll",
        command: bytes = b"P\r\n",
        terminator: bytes = b"\r\n",
        rate: float = 10.0,
        checksum: str | None = None,
        separator: str = "*",
        link: str | None = None,
        seed: int = 1,
    ) -> None:
        if kind not in ("scale", "thermo"):
            raise ValueError(f"unknown instrument kind {kind!r}; expected scale or thermo")
        if checksum is not None and checksum not in CHECKSUMS:
            raise ValueError(f"unknown checksum {checksum!r}; expected one of {', '.join(CHECKSUMS)}")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.kind, self.mode, self.command, self.terminator = kind, mode, command, terminator
        self.rate, self.checksum, self.separator, self.link = rate, checksum, separator, link
        self.faults = InstrumentFaults()
        self.weight, self.stable = 12.345, True
        self.t1, self.t2, self.ok = 23.45, 19.8, True
        self.lines_sent = self.polls = self.dropped = 0
        self._rng = random.Random(seed)
        self._pty: PtyPair | None = None
        self._inbox = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def path(self) -> str:
        """The device path the gateway opens (``/dev/pts/N``, or ``link`` when given)."""
        if self._pty is None:
            raise RuntimeError("the instrument is not started")
        return self.link or self._pty.path

    @property
    def pty_path(self) -> str:
        """The pty's own device path (``/dev/pts/N``)."""
        if self._pty is None:
            raise RuntimeError("the instrument is not started")
        return self._pty.path

    # -- lines ----------------------------------------------------------------------------------------------

    def reading(self) -> str:
        """The current reading as the device prints it (no checksum, no terminator)."""
        if self.kind == "scale":
            return f"{'ST' if self.stable else 'US'},GS,{self.weight:+09.3f}kg"
        return f"T1={self.t1:+07.2f};T2={self.t2:+07.2f};{'OK' if self.ok else 'ER'}"

    def frame(self, text: str) -> bytes:
        """``text`` with checksum (faults applied) and terminator: the bytes of one line on the wire."""
        data = text.encode("ascii")
        if self.checksum is not None:
            fn, width = CHECKSUMS[self.checksum]
            value = fn(data)
            if self._chance(self.faults.bad_checksum):
                value ^= 0x5A if width == 2 else 0x5A5A
            data += self.separator.encode("ascii") + f"{value:0{width}X}".encode("ascii")
        out = data + self.terminator
        if self._chance(self.faults.partial):
            out = data[: self._rng.randrange(1, max(2, len(data)))]
        if self._chance(self.faults.overlong):
            garbage = bytes(self._rng.randrange(0x21, 0x7F) for _ in range(self.faults.overlong_bytes))
            out = garbage + self.terminator
        if self._chance(self.faults.noise):
            noise = bytes(self._rng.choice([*range(0x80, 0x100), 0x00, 0x07, 0x1B, ord("#")])
                          for _ in range(self._rng.randint(1, 8)))  # fmt: skip
            out = noise + out
        return out

    def _chance(self, p: float) -> bool:
        return p > 0 and self._rng.random() < p

    def send(self, data: bytes) -> None:
        """Write raw bytes to the line (what the tests use to inject anything by hand)."""
        if self._pty is None:
            return
        try:
            n = os.write(self._pty.master_fd, data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:  # pty closed under us (stop())
            return
        self.dropped += len(data) - n

    def send_reading(self) -> None:
        self.send(self.frame(self.reading()))
        self.lines_sent += 1

    # -- life cycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pty = PtyPair(link=self.link)
        self._loop.add_reader(self._pty.master_fd, self._on_input)
        if self.mode == "stream":
            self._spawn(self._stream())

    async def stop(self) -> None:
        """Stop and close the pty: the gateway's open port sees end of file / an I/O error."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pty is not None and self._loop is not None:
            self._loop.remove_reader(self._pty.master_fd)
            self._pty.close()
            self._pty = None

    async def __aenter__(self) -> SerialInstrument:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.faults.silent:
                self.send_reading()
            next_at += 1.0 / self.rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _on_input(self) -> None:
        assert self._pty is not None
        try:
            data = os.read(self._pty.master_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self._inbox += data
        if self.mode != "poll":
            self._inbox.clear()
            return
        while (i := self._inbox.find(self.command)) >= 0:
            del self._inbox[: i + len(self.command)]
            self.polls += 1
            if self.faults.silent:
                continue
            if self.faults.delay > 0:
                self._spawn(self._reply_later(self.faults.delay))
            else:
                self.send_reading()
        if len(self._inbox) > 4096:
            del self._inbox[:-len(self.command)]

    async def _reply_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.send_reading()


# -- command line (``iiot-gateway simulate --instrument ...``) ----------------------------------------------


def add_instrument_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--instrument KIND --instrument-stream RATE --instrument-checksum KIND --instrument-link PATH``."""
    parser.add_argument("--instrument", choices=["scale", "thermo"], default=None,
                        help="also run a serial ASCII instrument on a pty and print its path "
                        "(scale: 'ST,GS,+0012.345kg', thermo: 'T1=+023.45;T2=+019.80;OK')")
    parser.add_argument("--instrument-stream", type=float, default=None, metavar="RATE",
                        help="stream RATE lines per second (default: answer each 'P\\r\\n' with one line)")
    parser.add_argument("--instrument-checksum", choices=list(CHECKSUMS), default=None,
                        help="append '*' and this checksum in hex to every line")
    parser.add_argument("--instrument-link", default=None, metavar="PATH",
                        help="also make PATH a symlink to the pty, so a config can name a stable port")  # fmt: skip


def instrument_from_args(args: argparse.Namespace) -> SerialInstrument | None:
    """The instrument the ``--instrument*`` arguments ask for (not started), or None."""
    kind = getattr(args, "instrument", None)
    if kind is None:
        return None
    rate = getattr(args, "instrument_stream", None)
    return SerialInstrument(kind, mode="stream" if rate else "poll", rate=rate or 10.0,
                            checksum=getattr(args, "instrument_checksum", None),
                            link=getattr(args, "instrument_link", None))  # fmt: skip


async def start_and_announce(instrument: SerialInstrument) -> None:
    """Start ``instrument`` and print where a gateway config should point (``port:``)."""
    await instrument.start()
    how = f"streams {instrument.rate:g} lines/s" if instrument.mode == "stream" else "answers 'P\\r\\n'"
    extra = f", checksum {instrument.checksum} after '*'" if instrument.checksum else ""
    where = f"{instrument.link} -> {instrument.pty_path}" if instrument.link else instrument.pty_path
    print(f"  serial {instrument.kind:<8} {where}  {how}{extra}  e.g. {instrument.reading()!r}", flush=True)
