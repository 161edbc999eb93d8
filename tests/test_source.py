"""Unit tests of the source task (gateway/source.py): what the engine side of the driver contract promises.

The driver here is a scripted one, on purpose: these tests are about the task that owns a driver (backoff,
timeouts, the outage and recovery log lines, bad-tag marking on a lost link, the write queue, the stream
write rule), and they need a driver that fails, hangs or streams exactly when the test says. How the bundled
drivers behave against real devices is tested in tests/drivers (the conformance suite over every driver) and
end to end in tests/e2e and tests/faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest

from gateway.batch import Batch, Quality
from gateway.config.common import SourceBase, TagBase
from gateway.driver import DeviceUnavailable, Driver, DriverContext, DriverSpec, Shared, StreamingDriver
from gateway.source import ERR_DISCONNECTED, WRITE_QUEUE, AssetRuntime
from gateway.writes import WriteFailed
from helpers import wait_until


class ScriptSource(SourceBase):
    driver: Literal["script"] = "script"


class ScriptTag(TagBase):
    pass


class Scripted(Driver):
    """A driver that does what the test sets: refuse connects, fail or hang reads, and count overlapping calls."""

    def __init__(self, source: ScriptSource, tags: list[ScriptTag], context: DriverContext) -> None:
        self.n = len(tags)
        self.value = 1.0
        self.connects = self.closes = 0
        self.refuse_connects = 0  # this many connects raise DeviceUnavailable
        self.read_errors: list[BaseException] = []  # raised by the next reads, one each
        self.read_gate: asyncio.Event | None = None  # when set: a read waits for it
        self.inside = 0  # calls in progress
        self.overlaps = 0  # a call started while another was in progress

    @contextlib.contextmanager
    def _call(self):
        if self.inside:
            self.overlaps += 1
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1

    async def connect(self) -> None:
        self.connects += 1
        if self.refuse_connects:
            self.refuse_connects -= 1
            raise DeviceUnavailable("connection refused")

    async def read(self) -> Batch:
        with self._call():
            await asyncio.sleep(0.002)
            if self.read_gate is not None:
                await self.read_gate.wait()
            if self.read_errors:
                raise self.read_errors.pop(0)
            return self.batch()

    def batch(self) -> Batch:
        batch = Batch.empty(self.n, 0)
        batch.ts[:] = np.int64(1)
        batch.values[:] = self.value
        return batch

    async def write(self, tag: str, value: Any) -> Any:
        with self._call():
            await asyncio.sleep(0.005)
            if value == "gone":
                raise DeviceUnavailable("link lost during the write")
            if not isinstance(value, (int, float)):
                raise ValueError(f"{value!r} is not a number")
            self.value = float(value)
            return self.value

    async def close(self) -> None:
        self.closes += 1


class Streaming(Scripted, StreamingDriver):
    """Streams: one full batch after connect, then one per ``push()``; waiting for a push is inside the driver."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pushes: asyncio.Queue[float] = asyncio.Queue()

    def push(self, value: float) -> None:
        self.pushes.put_nowait(value)

    async def subscribe(self) -> AsyncIterator[Batch]:
        yield self.batch()
        while True:
            with self._call():
                self.value = await self.pushes.get()
            yield self.batch()


class Multiplexed(Streaming):
    writes_during_stream: ClassVar[bool] = True


def runtime(driver_cls: type[Scripted], **source: Any) -> AssetRuntime:
    cfg = type("Asset", (), {})()
    cfg.id = "press-1"
    cfg.source = ScriptSource(**{"poll": 0.02, "timeout": 0.5, "retry_max": 0.05, **source})
    cfg.tags = [ScriptTag(name="a"), ScriptTag(name="b")]
    spec = DriverSpec("script", ScriptSource, ScriptTag, driver_cls)
    return AssetRuntime(cfg, spec, buffer_seconds=10, state_dir=Path("unused"), shared=Shared())


@contextlib.asynccontextmanager
async def running(rt: AssetRuntime):
    task = asyncio.create_task(rt.run())
    try:
        yield rt.driver
    finally:
        rt.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def newest(rt: AssetRuntime) -> tuple[np.ndarray, np.ndarray]:
    _ts, values, quality, _has = rt.ring.last()
    return values, quality


async def test_polls_fill_the_ring_and_the_status() -> None:
    rt = runtime(Scripted)
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 3)
        assert rt.status.state == "connected"
        values, quality = newest(rt)
        assert values.tolist() == [1.0, 1.0] and (quality == Quality.GOOD).all()
        assert driver.overlaps == 0
    assert rt.status.state == "stopped" and driver.closes >= 1


async def test_a_refused_connect_backs_off_and_logs_the_outage_and_the_recovery_once(caplog) -> None:
    rt = runtime(Scripted)
    rt.driver.refuse_connects = 4
    with caplog.at_level(logging.INFO, logger="gateway.source"):
        async with running(rt):
            assert await wait_until(lambda: rt.status.polls >= 2)
    assert rt.status.connect_failures == 4
    texts = [r.getMessage() for r in caplog.records]
    assert sum("connect failed" in t for t in texts) == 1, texts  # one line per outage, not one per retry
    assert sum("connected again" in t for t in texts) == 1, texts


async def test_a_lost_connection_marks_every_tag_bad_then_reconnects() -> None:
    rt = runtime(Scripted)
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 2)
        driver.read_gate = asyncio.Event()
        driver.read_errors.append(DeviceUnavailable("socket closed"))
        driver.read_gate.set()
        assert await wait_until(lambda: int(rt.ring.last_error[0]) == ERR_DISCONNECTED)
        _values, quality = newest(rt)
        assert (quality == Quality.BAD).all()
        assert "disconnected: socket closed" in rt.ring.error_text.values()
        driver.read_gate = None
        assert await wait_until(lambda: rt.status.reconnects == 1 and rt.status.state == "connected")
        assert await wait_until(lambda: bool((newest(rt)[1] == Quality.GOOD).all()))
        assert rt.status.poll_errors == 1 and driver.connects == 2


async def test_a_driver_bug_gets_one_traceback_and_the_source_carries_on(caplog) -> None:
    rt = runtime(Scripted)
    rt.driver.read_errors += [RuntimeError("index out of range")] * 3
    with caplog.at_level(logging.INFO, logger="gateway.source"):
        async with running(rt):
            assert await wait_until(lambda: rt.status.polls >= 2, timeout=15)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "driver error during poll" in errors[0].getMessage()
    assert rt.status.poll_errors == 3


async def test_a_read_that_hangs_runs_into_the_source_timeout() -> None:
    rt = runtime(Scripted, timeout=0.1)
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 1)
        driver.read_gate = asyncio.Event()  # never set: the device stops answering
        assert await wait_until(lambda: rt.status.state == "disconnected")
        assert rt.status.last_error == "poll: timed out"
        driver.read_gate.set()
        driver.read_gate = None
        assert await wait_until(lambda: rt.status.state == "connected" and rt.status.reconnects == 1)


async def test_writes_run_between_polls_and_return_the_value_read_back() -> None:
    rt = runtime(Scripted)
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 1)
        results = await asyncio.gather(*(rt.write("a", float(v)) for v in range(5)))
        assert results == [0.0, 1.0, 2.0, 3.0, 4.0]  # in the order they were queued
        assert await wait_until(lambda: newest(rt)[0].tolist() == [4.0, 4.0])
        assert driver.overlaps == 0  # never a write during a read


async def test_write_failures_say_what_happened() -> None:
    rt = runtime(Scripted)
    with pytest.raises(WriteFailed) as not_yet:
        await rt.write("a", 1.0)
    assert not_yet.value.kind == "unavailable" and "connecting" in not_yet.value.message
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 1)
        with pytest.raises(WriteFailed) as invalid:
            await rt.write("a", "open")
        assert invalid.value.kind == "invalid" and "not a number" in invalid.value.message
        # a device that stops answering: writes queue up to WRITE_QUEUE, the next is refused at once
        driver.read_gate = asyncio.Event()
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(rt.write("a", 7.0)) for _ in range(WRITE_QUEUE)]
        await asyncio.sleep(0)
        with pytest.raises(WriteFailed) as busy:
            await rt.write("a", 8.0)
        assert busy.value.kind == "busy"
        driver.read_gate.set()
        driver.read_gate = None
        assert await asyncio.gather(*queued) == [7.0] * WRITE_QUEUE


async def test_a_write_that_finds_the_link_gone_makes_the_source_reconnect() -> None:
    rt = runtime(Scripted)
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 1)
        with pytest.raises(WriteFailed) as gone:
            await rt.write("a", "gone")
        assert gone.value.kind == "unavailable"
        assert await wait_until(lambda: driver.connects == 2 and rt.status.state == "connected")


async def test_stream_writes_wait_until_the_stream_is_outside_the_driver() -> None:
    rt = runtime(Streaming)
    assert rt.streaming
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 1)  # the first full batch
        write = asyncio.ensure_future(rt.write("a", 5.0))
        await asyncio.sleep(0.1)
        assert not write.done()  # subscribe() is waiting inside the driver: the write must wait too
        driver.push(2.0)
        assert await write == 5.0
        assert driver.overlaps == 0
        assert newest(rt)[0].tolist() == [2.0, 2.0]


async def test_a_driver_that_multiplexes_gets_stream_writes_at_once() -> None:
    rt = runtime(Multiplexed)
    async with running(rt) as driver:
        assert await wait_until(lambda: rt.status.polls >= 1)
        async with asyncio.timeout(5):
            assert await rt.write("a", 5.0) == 5.0  # no batch came meanwhile
        assert driver.overlaps >= 1  # it ran while subscribe() waited, as the driver declared safe
        driver.push(3.0)
        assert await wait_until(lambda: newest(rt)[0].tolist() == [3.0, 3.0])


async def test_a_slow_poll_skips_slots_instead_of_piling_up() -> None:
    rt = runtime(Scripted, poll=0.02)

    async def slow() -> Batch:
        await asyncio.sleep(0.07)  # 3.5 poll intervals
        return rt.driver.batch()

    rt.driver.read = slow
    async with running(rt):
        assert await wait_until(lambda: rt.status.polls >= 4)
    assert rt.status.overruns >= 2 * (rt.status.polls - 1)  # at least two slots skipped per slow poll
