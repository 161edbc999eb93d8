"""Serial ASCII instrument driver (``driver: serial_line``): poll or stream lines, parse them into tags.

Poll mode: ``read()`` throws away whatever arrived since the last poll, sends ``command``, and turns the
next line into a full batch; a reply that is rejected (pattern, checksum, encoding, too long, incomplete)
gives every tag BAD with the reason, a group that does not convert marks that tag BAD. No reply at all
runs into the engine's ``timeout``, which makes the asset disconnected. ``connect()`` opens the port and
sends one command: the device must answer (with any line) for the asset to count as connected.

Stream mode (:class:`SerialLineStreamDriver`): ``subscribe()`` yields one batch per accepted line, holding the tags
whose groups the line matched. Rejected lines are only counted: nothing is published for them. With
``max_silence`` set, ``connect()`` waits for a first valid line and ``subscribe()`` raises
:class:`DeviceUnavailable` when no valid line came for that long.

In both modes every discarded line or fragment is counted in :attr:`SerialLineDriver.stats` (the status API's
``driver_counters``); the last one is described in :attr:`SerialLineDriver.last_rejected`. Tags are
read-only: a write raises :class:`~gateway.scaling.TagNotWritable`. A closed or removed port raises
:class:`DeviceUnavailable`. I/O runs on the event loop through non-blocking file descriptors (see
:mod:`drivers.serial_line.port`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from drivers.serial_line.config import SerialLineSource, SerialLineTag, check
from drivers.serial_line.framing import LineCounters
from drivers.serial_line.parse import (
    ERR_MISSING,
    ERROR_TEXT,
    LineParser,
    LineRejected,
    Parsed,
    preview,
)
from drivers.serial_line.port import Item, SerialPort
from gateway.batch import Batch
from gateway.driver import DeviceUnavailable, Driver, DriverContext, DriverSpec, StreamingDriver
from gateway.scaling import TagNotWritable

#: connect gives up this much before the engine's timeout, so the error says what was missing
_CONNECT_MARGIN = 0.05


class SerialLineDriver(Driver):
    """Reads a line-oriented ASCII instrument on a serial port (poll mode; stream mode is
    :class:`SerialLineStreamDriver`). See :mod:`gateway.driver` for the contract.

    Public state for status views: ``stats`` (:class:`LineCounters`, monotonic since start, kept across
    reconnects), ``last_rejected`` (what the last discarded line was and why).
    """

    def __init__(self, source: SerialLineSource, tags: list[SerialLineTag], context: DriverContext) -> None:
        self.source = source
        self.tags = list(tags)
        self.stats = LineCounters()
        self.last_rejected: str | None = None
        self.parser = LineParser(source, self.tags)
        self._port: SerialPort | None = None
        self._first: list[Batch] = []

    # -- connection ----------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the port and wait until the device shows it is there (:meth:`_ready`). Raises :class:`DeviceUnavailable` when the port cannot be opened or the
        device does not answer."""
        await self.close()
        port = SerialPort(self.source, self.stats)
        await port.open()
        self._port = port
        loop = asyncio.get_running_loop()
        await self._ready(port, loop.time() + max(self.source.timeout - _CONNECT_MARGIN, self.source.timeout * 0.9))

    async def _ready(self, port: SerialPort, deadline: float) -> None:
        """Poll mode: the device answers one command (any line, even a rejected one) before ``deadline``."""
        await self._probe(port, deadline)

    async def _probe(self, port: SerialPort, deadline: float) -> None:
        command = self.source.command_bytes
        assert command is not None
        port.discard_pending()
        await port.write(command)
        while True:
            item = await port.next(deadline)
            if item is None:
                raise DeviceUnavailable(f"no reply to {_show(command)} within {self.source.timeout:g} s "
                                        f"on {self.source.port}")  # fmt: skip
            if self._take(item) is not None:  # any reply, even a rejected one, proves the device is there
                return

    async def close(self) -> None:
        port, self._port = self._port, None
        self._first.clear()
        if port is not None:
            port.close()

    def _require(self) -> SerialPort:
        if self._port is None:
            raise DeviceUnavailable("not connected")
        return self._port

    # -- lines -----------------------------------------------------------------------------------------------

    def _take(self, item: Item) -> Parsed | LineRejected | None:
        """Parse and count one received item; ``None`` for an empty line (skipped)."""
        if isinstance(item, LineRejected):  # overlong / partial: counted by the framer
            self.last_rejected = item.detail
            return item
        ts, line = item
        if not line:
            self.stats.empty += 1
            return None
        try:
            parsed = self.parser.parse(line, ts)
        except LineRejected as rejected:
            setattr(self.stats, rejected.counter, getattr(self.stats, rejected.counter) + 1)
            self.last_rejected = rejected.detail
            return rejected
        self.stats.accepted += 1
        if parsed.bad_values:
            self.stats.bad_value += 1
            self.last_rejected = f"a value does not convert to its tag's type: '{preview(line)}'"
        return parsed

    def _rejections_note(self) -> str:
        return f" (last discarded: {self.last_rejected})" if self.last_rejected else ""

    # -- poll mode -------------------------------------------------------------------------------------------

    async def read(self) -> Batch:
        """Send the command and parse the reply into every tag (plan order)."""
        port = self._require()
        command = self.source.command_bytes
        if command is None:
            raise RuntimeError("read() is for poll mode; this source streams (use subscribe())")
        port.discard_pending()
        await port.write(command)
        while True:
            item = await port.next()
            result = self._take(item)  # type: ignore[arg-type]  # next() without deadline never gives None
            if result is None:
                continue
            if isinstance(result, LineRejected):
                ts = item[0] if isinstance(item, tuple) else _now_ns()
                return Batch.all_bad(len(self.tags), ts, result.code, ERROR_TEXT[result.code])
            batch = result.batch
            missing = np.flatnonzero(~result.present)
            if missing.size:
                batch.mark_bad(missing, ERR_MISSING, ERROR_TEXT[ERR_MISSING])
            return batch

    # -- write -----------------------------------------------------------------------------------------------

    async def write(self, tag: str, value: Any) -> Any:
        raise TagNotWritable(f"tag {tag!r}: serial_line tags are read-only (the driver only listens and asks)")

    def counters(self) -> dict[str, int]:
        return self.stats.as_dict()


class SerialLineStreamDriver(SerialLineDriver, StreamingDriver):
    """``mode: stream``: the instrument sends lines by itself; the gateway iterates :meth:`subscribe`."""

    async def _ready(self, port: SerialPort, deadline: float) -> None:
        """With ``max_silence``: a first valid line before ``deadline`` (kept for ``subscribe()``)."""
        if self.source.max_silence is None:
            return
        while not self._first:
            item = await port.next(deadline)
            if item is None:
                raise DeviceUnavailable(f"no valid line within {self.source.timeout:g} s of opening "
                                        f"{self.source.port}{self._rejections_note()}")  # fmt: skip
            parsed = self._take(item)
            if isinstance(parsed, Parsed) and (batch := self._stream_batch(parsed)) is not None:
                self._first.append(batch)

    async def subscribe(self) -> AsyncIterator[Batch]:
        """Yield one batch per accepted line (the tags its groups carried); raise :class:`DeviceUnavailable`
        when the port fails, or when no valid line came for ``max_silence``."""
        port = self._require()
        loop = asyncio.get_running_loop()
        silence = self.source.max_silence
        while self._first:
            yield self._first.pop(0)
        last_good = loop.time()
        while True:
            item = await port.next(None if silence is None else last_good + silence)
            if item is None:
                raise DeviceUnavailable(f"no valid line for {silence:g} s{self._rejections_note()}")
            parsed = self._take(item)
            if not isinstance(parsed, Parsed):
                continue
            last_good = loop.time()
            batch = self._stream_batch(parsed)
            if batch is not None:
                yield batch

    @staticmethod
    def _stream_batch(parsed: Parsed) -> Batch | None:
        """The batch of the tags a line carried (all of them: plan order, ``index`` None)."""
        batch = parsed.batch
        if parsed.present.all():
            return batch
        index = np.flatnonzero(parsed.present)
        if index.size == 0:
            return None
        strings = {j: batch.strings[int(i)] for j, i in enumerate(index.tolist()) if int(i) in batch.strings}
        return Batch(
            ts=batch.ts[index], values=batch.values[index], quality=batch.quality[index], errors=batch.errors[index],
            index=index, error_text=batch.error_text, strings=strings,
        )  # fmt: skip


def _show(data: bytes) -> str:
    return "'" + repr(data)[2:-1] + "'"


def _now_ns() -> int:
    return time.time_ns()


def create(source: SerialLineSource, tags: list[SerialLineTag], context: DriverContext) -> Driver:
    return (SerialLineStreamDriver if source.mode == "stream" else SerialLineDriver)(source, tags, context)


SPEC = DriverSpec("serial_line", SerialLineSource, SerialLineTag, create, check)
