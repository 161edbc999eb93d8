"""The serial_line driver against the simulated instruments on ptys, through the real source task (engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path
import contextlib

import numpy as np
import pytest
from helpers import wait_until
from serial_helpers import scale_asset, thermo_asset

from drivers.serial_line.driver import SPEC, SerialLineDriver, SerialLineStreamDriver
from drivers.serial_line.parse import (
    ERR_CHECKSUM,
    ERR_DECODE,
    ERR_NO_MATCH,
    ERR_PARTIAL,
)
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext, Shared
from gateway.source import ERR_DISCONNECTED, AssetRuntime
from simulators.serial_instrument import SerialInstrument

XOR = "checksum: {kind: xor8, separator: '*'}"


@contextlib.asynccontextmanager
async def running(asset_cfg):
    rt = AssetRuntime(asset_cfg, SPEC, buffer_seconds=60, state_dir=Path("unused"), shared=Shared())
    task = asyncio.create_task(rt.run())
    try:
        yield rt
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def history(rt: AssetRuntime, tag: str) -> tuple[np.ndarray, np.ndarray]:
    w = rt.ring.window(rt.tag_index[tag], 0)
    return w.values, w.quality


def good_values(rt: AssetRuntime, tag: str) -> np.ndarray:
    values, quality = history(rt, tag)
    return values[quality == Quality.GOOD]


async def test_poll_mode_reads_typed_scaled_values(load_asset) -> None:
    async with SerialInstrument("scale") as sim:
        sim.weight, sim.stable = -3.25, False
        async with running(load_asset(scale_asset(sim.path))) as rt:
            assert await wait_until(lambda: rt.status.polls >= 3, 10)
            _, v, q, _ = rt.ring.last()
            assert q.tolist() == [Quality.GOOD, Quality.GOOD]
            assert v.tolist() == [-3250.0, 0.0]  # kg * 1000 -> g; US -> false
            sim.weight, sim.stable = 0.5, True
            assert await wait_until(lambda: rt.ring.last()[1].tolist() == [500.0, 1.0], 10)
            assert rt.status.state == "connected" and sim.polls >= rt.status.polls
            assert rt.driver.counters()["accepted"] >= rt.status.polls


async def test_stream_mode_publishes_every_line_as_it_arrives(load_asset) -> None:
    async with SerialInstrument("thermo", mode="stream", rate=40) as sim:
        sim.t1, sim.t2 = 21.5, 100.0
        async with running(load_asset(thermo_asset(sim.path))) as rt:
            assert rt.streaming
            assert await wait_until(lambda: rt.status.polls >= 20, 10)
            _, v, q, _ = rt.ring.last()
            assert v[:3].tolist() == [21.5, 212.0, 1.0] and (q == Quality.GOOD).all()
            assert rt.ring.last_string[3] == "OK"
            sim.ok = False
            assert await wait_until(lambda: rt.ring.last_string[3] == "ER" and rt.ring.last()[1][2] == 0.0, 10)
            values, _ = history(rt, "zone1")
            assert len(values) >= 20  # one sample per line, not one per poll interval


async def test_checksum_accepted_and_rejected_in_poll_mode(load_asset) -> None:
    async with SerialInstrument("scale", checksum="xor8") as sim:
        async with running(load_asset(scale_asset(sim.path, checksum=XOR))) as rt:
            assert await wait_until(lambda: rt.status.polls >= 2 and rt.ring.last()[2][0] == Quality.GOOD, 10)
            sim.faults.bad_checksum = 1.0
            polls = rt.status.polls
            assert await wait_until(lambda: rt.status.polls >= polls + 3, 10)
            _, v, q, _ = rt.ring.last()
            assert q.tolist() == [Quality.BAD, Quality.BAD] and np.isnan(v).all()
            assert int(rt.ring.last_error[0]) == ERR_CHECKSUM
            assert rt.driver.counters()["checksum"] >= 3
            assert "mismatch" in rt.driver.last_rejected
            assert rt.status.state == "connected"  # a bad reply is a bad value, not a lost device
            sim.faults.bad_checksum = 0.0
            assert await wait_until(lambda: rt.ring.last()[2][0] == Quality.GOOD, 10)
            assert set(good_values(rt, "weight_g").tolist()) == {12345.0}


async def test_bad_replies_mark_tags_bad_with_their_reason(load_asset) -> None:
    async with SerialInstrument("scale") as sim:
        async with running(load_asset(scale_asset(sim.path, extra="char_timeout: 50ms"))) as rt:
            assert await wait_until(lambda: rt.status.polls >= 2, 10)
            for fault, codes in (("partial", {ERR_PARTIAL}), ("noise", {ERR_NO_MATCH, ERR_DECODE})):
                setattr(sim.faults, fault, 1.0)
                polls = rt.status.polls
                assert await wait_until(lambda p=polls: rt.status.polls >= p + 2, 10), fault
                assert int(rt.ring.last_error[0]) in codes and rt.ring.last()[2][0] == Quality.BAD, fault
                setattr(sim.faults, fault, 0.0)
            c = rt.driver.counters()
            assert c["partial"] >= 2 and (c["no_match"] + c["decode"]) >= 2
            assert set(good_values(rt, "weight_g").tolist()) == {12345.0}


async def test_stream_noise_partial_overlong_and_bad_checksums_are_discarded_counted_never_published(
    load_asset,
) -> None:
    async with SerialInstrument("thermo", mode="stream", rate=12, checksum="xor8", seed=7) as sim:
        sim.faults.noise = sim.faults.partial = sim.faults.bad_checksum = 0.2
        sim.faults.overlong, sim.faults.overlong_bytes = 0.1, 300
        cfg = load_asset(thermo_asset(sim.path, checksum=XOR, extra="max_line: 64\n    char_timeout: 40ms"))
        async with running(cfg) as rt:
            assert await wait_until(lambda: sim.lines_sent >= 60, 20)
            c = rt.driver.counters()
            assert c["accepted"] >= 10
            assert c["overlong"] >= 1 and c["partial"] >= 1 and c["checksum"] >= 1
            discarded = sum(c[k] for k in ("no_match", "checksum", "decode", "overlong", "partial", "unsolicited"))
            assert c["accepted"] + discarded >= sim.lines_sent - 2  # every line accounted for (2 in flight)
            assert set(good_values(rt, "zone1").tolist()) == {23.45}
            np.testing.assert_allclose(good_values(rt, "zone2_f"), 19.8 * 1.8 + 32)
            assert rt.status.state == "connected" and rt.status.tag_errors == 0


async def test_silent_device_times_out_to_disconnected_and_recovers_poll_mode(load_asset) -> None:
    async with SerialInstrument("scale") as sim:
        async with running(load_asset(scale_asset(sim.path, timeout="300ms"))) as rt:
            assert await wait_until(lambda: rt.status.polls >= 2, 10)
            sim.faults.silent = True
            assert await wait_until(lambda: rt.status.state == "disconnected", 10)
            _, _, q, _ = rt.ring.last()
            assert (q == Quality.BAD).all() and int(rt.ring.last_error[0]) == ERR_DISCONNECTED
            await asyncio.sleep(1.0)
            assert rt.status.state == "disconnected"  # reconnects need an answer: no connected/disconnected flapping
            assert "no reply to 'P\\r\\n'" in rt.status.last_error or "timed out" in rt.status.last_error
            sim.faults.silent = False
            assert await wait_until(lambda: rt.status.state == "connected" and rt.ring.last()[2][0] == 0, 10)


async def test_silent_stream_goes_disconnected_after_max_silence(load_asset) -> None:
    async with SerialInstrument("thermo", mode="stream", rate=20) as sim:
        cfg = load_asset(thermo_asset(sim.path, extra="max_silence: 400ms\n    timeout: 500ms"))
        async with running(cfg) as rt:
            assert await wait_until(lambda: rt.status.polls >= 3, 10)
            sim.faults.noise = 1.0  # still talking, but nothing valid: as bad as silence
            assert await wait_until(lambda: rt.status.state == "disconnected", 10)
            assert "no valid line for 0.4 s" in rt.status.last_error
            sim.faults.noise = 0.0
            assert await wait_until(lambda: rt.status.state == "connected", 10)
            polls = rt.status.polls
            assert await wait_until(lambda: rt.status.polls > polls + 3, 10)


async def test_closed_pty_raises_device_unavailable(load_asset) -> None:
    sim = SerialInstrument("scale")
    await sim.start()
    asset = load_asset(scale_asset(sim.path))
    driver = SerialLineDriver(asset.source, asset.tags, DriverContext.detached("test", len(asset.tags)))
    await driver.connect()
    assert (await driver.read()).values[0] == 12345.0
    await sim.stop()
    with pytest.raises(DeviceUnavailable, match="closed|failed"):
        async with asyncio.timeout(2):
            await driver.read()
    await driver.close()
    with pytest.raises(DeviceUnavailable, match="cannot open"):
        await driver.connect()
    await driver.close()


async def test_closed_pty_ends_a_stream_with_device_unavailable(load_asset) -> None:
    async with SerialInstrument("thermo", mode="stream", rate=50) as sim:
        asset = load_asset(thermo_asset(sim.path))
        driver = SerialLineStreamDriver(asset.source, asset.tags, DriverContext.detached("test", len(asset.tags)))
        await driver.connect()
        got = 0
        with pytest.raises(DeviceUnavailable):
            async with asyncio.timeout(5):
                async for _ in driver.subscribe():
                    got += 1
                    if got == 3:
                        await sim.stop()
        await driver.close()


async def test_a_port_is_opened_by_one_asset_only(load_asset) -> None:
    async with SerialInstrument("scale") as sim:
        asset = load_asset(scale_asset(sim.path))
        first, second = (SerialLineDriver(asset.source, asset.tags, DriverContext.detached(name, len(asset.tags)))
                         for name in ("first", "second"))
        await first.connect()
        try:
            with pytest.raises(DeviceUnavailable, match="in use"):
                await second.connect()
        finally:
            await first.close()
            await second.close()
