"""The driver conformance suite: every registered driver, and the example driver of docs/writing-a-driver.md,
keeps the promises of the contract in gateway/driver.py against its real (simulated) device.

Each driver brings a rig (tests/drivers/driver_rigs.py); a registered driver without one fails here, so a new
driver cannot skip the suite. Calls are wrapped in the source's timeout as the engine wraps them: a driver that
only hangs where it should raise fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from driver_rigs import EXAMPLE, KNOWN_FAILURES, RIGS, STREAM_RIGS, Rig, build, example_installed

from gateway.batch import Batch, Quality
from gateway.driver import DeviceUnavailable, Driver, registry
from gateway.scaling import TagNotWritable

T = TypeVar("T")

#: every driver registered in this environment, and the example driver (installed by the fixture below)
DRIVERS = sorted({*registry(), EXAMPLE})


@pytest.fixture(autouse=True)
def example_driver(tmp_path_factory) -> Any:
    with example_installed(tmp_path_factory.mktemp("site")) as paths:
        yield paths


@pytest.fixture(params=DRIVERS)
async def rig(request, tmp_path) -> AsyncIterator[tuple[str, Rig]]:
    name = request.param
    if name not in RIGS:
        pytest.fail(f"driver {name!r} is registered but has no rig in tests/drivers/driver_rigs.py: add one "
                    "(its bundled simulator and a source + tags config), every driver passes this suite")
    known = KNOWN_FAILURES.get((name, request.node.originalname))
    if known:
        request.applymarker(pytest.mark.xfail(reason=known, strict=False))
    r = RIGS[name]()
    await r.start(tmp_path)
    try:
        yield name, r
    finally:
        await r.stop()


def test_every_registered_driver_has_a_rig() -> None:
    assert EXAMPLE in registry(), "the example driver is not found through its entry point"
    assert set(registry()) <= set(RIGS), f"no rig for {sorted(set(registry()) - set(RIGS))}"


async def timed(rig: Rig, call: Awaitable[T]) -> T:
    """``call`` under the source's timeout, as the engine runs every driver call."""
    async with asyncio.timeout(float(rig.source.get("timeout", 2)) + 1):
        return await call


def positions(rig: Rig) -> dict[str, int]:
    return {t["name"]: i for i, t in enumerate(rig.tags)}


def assert_good_read(rig: Rig, batch: Batch) -> None:
    """A full poll: every tag once in plan order, typed arrays, the known values, only the bad tag bad."""
    n = len(rig.tags)
    assert batch.index is None and len(batch) == n
    assert batch.ts.dtype == np.int64 and batch.values.dtype == np.float64
    assert batch.quality.dtype == np.uint8 and batch.errors.dtype == np.int32
    assert batch.ts.shape == batch.quality.shape == batch.errors.shape == (n,)
    pos = positions(rig)
    bad = pos[rig.bad]
    good = np.arange(n) != bad
    assert (batch.quality[good] == Quality.GOOD).all(), batch
    assert (batch.errors[good] == 0).all() and np.isfinite(batch.values[good]).all()
    for name, value in rig.expected.items():
        assert batch.values[pos[name]] == pytest.approx(value), name


@contextlib.asynccontextmanager
async def opened(name: str, rig: Rig, tmp_path: Path, *, connect: bool = True) -> AsyncIterator[Any]:
    """The rig's driver, connected unless ``connect`` is False; closed on the way out whatever happened."""
    driver: Driver = build(name, rig, tmp_path / "state")
    try:
        if connect:
            await timed(rig, driver.connect())
        yield driver
    finally:
        await driver.close()


async def test_connect_read_close(rig, tmp_path) -> None:
    name, r = rig
    async with opened(name, r, tmp_path) as driver:
        assert_good_read(r, await timed(r, driver.read()))
        assert_good_read(r, await timed(r, driver.read()))  # and again on the same connection
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in dict(driver.counters()).items())


async def test_one_bad_tag_is_marked_bad_and_the_others_stand(rig, tmp_path) -> None:
    name, r = rig
    async with opened(name, r, tmp_path) as driver:
        batch = await timed(r, driver.read())
    bad = positions(r)[r.bad]
    assert batch.quality[bad] == Quality.BAD and np.isnan(batch.values[bad])
    code = int(batch.errors[bad])
    assert code != 0 and batch.error_text.get(code), "a bad tag carries an error code with its text"
    assert_good_read(r, batch)


async def test_close_without_connect_and_twice_does_not_raise(rig, tmp_path) -> None:
    name, r = rig
    driver = build(name, r, tmp_path / "state")
    await driver.close()
    await timed(r, driver.connect())
    assert_good_read(r, await timed(r, driver.read()))
    await driver.close()
    await driver.close()


async def _cancel_soon(call: Awaitable[Any]) -> None:
    """Start ``call``, cancel it while it waits inside the driver; the cancellation must not be swallowed."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    if task.cancel():
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancel_during_connect_then_close_then_connect_works(rig, tmp_path) -> None:
    name, r = rig
    async with opened(name, r, tmp_path, connect=False) as driver:
        await _cancel_soon(driver.connect())
        await driver.close()
        await timed(r, driver.connect())
        assert_good_read(r, await timed(r, driver.read()))


async def test_cancel_during_read_then_close_then_connect_works(rig, tmp_path) -> None:
    name, r = rig
    async with opened(name, r, tmp_path) as driver:
        await _cancel_soon(driver.read())
        await driver.close()
        await timed(r, driver.connect())
        assert_good_read(r, await timed(r, driver.read()))


async def test_device_away_raises_device_unavailable_and_reconnect_works_when_back(rig, tmp_path) -> None:
    name, r = rig
    async with opened(name, r, tmp_path) as driver:
        assert_good_read(r, await timed(r, driver.read()))
        await r.away()
        with pytest.raises(DeviceUnavailable):
            await timed(r, driver.read())
        await driver.close()
        with pytest.raises(DeviceUnavailable):  # the engine's next attempt, while the device is still away
            await timed(r, driver.connect())
        await driver.close()
        await r.back()
        await timed(r, driver.connect())
        assert_good_read(r, await timed(r, driver.read()))


async def test_write_reads_back(rig, tmp_path) -> None:
    name, r = rig
    async with opened(name, r, tmp_path) as driver:
        if r.write is None:  # a read-only driver says so
            with pytest.raises(TagNotWritable):
                await timed(r, driver.write(r.tags[0]["name"], 1))
            return
        tag, value, back = r.write
        assert await timed(r, driver.write(tag, value)) == pytest.approx(back)
        batch = await timed(r, driver.read())
        assert batch.values[positions(r)[tag]] == pytest.approx(back)


async def test_write_of_a_value_the_tag_cannot_hold_raises_and_the_connection_stands(rig, tmp_path) -> None:
    name, r = rig
    async with opened(name, r, tmp_path) as driver:
        if r.unwritable is None:
            with pytest.raises(TagNotWritable):
                await timed(r, driver.write(r.tags[0]["name"], 1))
            return
        tag, value = r.unwritable
        before = (await timed(r, driver.read())).values[positions(r)[tag]]
        with pytest.raises((ValueError, TypeError)):
            await timed(r, driver.write(tag, value))
        batch = await timed(r, driver.read())
        assert_good_read(r, batch)
        assert batch.values[positions(r)[tag]] == before, "nothing was written"


# ------------------------------------------------------------------------------------------- streaming drivers


@pytest.fixture(params=sorted(STREAM_RIGS))
async def stream_rig(request, tmp_path) -> AsyncIterator[tuple[str, Rig]]:
    r = STREAM_RIGS[request.param]()
    await r.start(tmp_path)
    try:
        yield request.param, r
    finally:
        await r.stop()


async def next_batch(stream: AsyncIterator[Batch], timeout: float = 10) -> Batch:
    """The next batch of a stream; ``timeout`` only guards against a hang (a quiet stream may wait long)."""
    async with asyncio.timeout(timeout):
        return await anext(stream)


def assert_subset(rig: Rig, batch: Batch) -> None:
    if batch.index is None:
        assert len(batch) == len(rig.tags)
        return
    index = batch.index.tolist()
    assert len(index) == len(set(index)) == len(batch), "each tag at most once per batch"
    assert all(0 <= i < len(rig.tags) for i in index)


async def test_stream_starts_with_a_full_read_after_each_connect(stream_rig, tmp_path) -> None:
    name, r = stream_rig
    async with opened(name, r, tmp_path) as driver:
        stream = driver.subscribe()
        assert_good_read(r, await next_batch(stream))
        await stream.aclose()
        await driver.close()
        await timed(r, driver.connect())
        stream = driver.subscribe()
        assert_good_read(r, await next_batch(stream))
        await stream.aclose()


async def test_stream_raises_device_unavailable_when_the_device_goes_away(stream_rig, tmp_path) -> None:
    name, r = stream_rig
    async with opened(name, r, tmp_path) as driver:
        stream = driver.subscribe()
        assert_good_read(r, await next_batch(stream))
        await r.away()
        with pytest.raises(DeviceUnavailable):
            while True:  # batches already on their way may still come
                assert_subset(r, await next_batch(stream))
        await driver.close()
        await r.back()
        await timed(r, driver.connect())
        stream = driver.subscribe()
        assert_good_read(r, await next_batch(stream))
        await stream.aclose()
