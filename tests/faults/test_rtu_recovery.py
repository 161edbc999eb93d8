"""RS-485 that recovers by itself: a healthy slave beside a dead one keeps its polls.

A libmodbus RTU slave that sees a request for another unit waits up to its own response timeout (0.5 s)
for that unit's answer and takes the next frame for it. With a dead unit 9 on the line, a request to the
healthy unit 7 sent right after unit 9's timeout is swallowed. The gateway keeps the bus silent until
``silent_after_timeout`` after a timed-out request and retries a request once, so unit 7 keeps its polls.

Two slaves play unit 7: the simulator's ``ignore_after_other`` knob, and a real libmodbus slave
(``libmodbus_slave.c``) on a pty relayed to the gateway's pty. Unit 9 is nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from libmodbus_slave import PtyRelay, slave_binary, start_slave, stop_slave

from drivers.modbus.config import ModbusTag
from drivers.modbus.rtu import RTU_SPEC, ModbusRtuDriver
from drivers.modbus.rtu_config import ModbusRtuSource
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext, Shared
from gateway.status import Backoff
from simulators.modbus_rtu_sim import ModbusRtuSimulator, RtuSlave

HEALTHY, DEAD = 7, 9
TAGS = [ModbusTag(name="a", address="hr:0", type="uint16"), ModbusTag(name="b", address="hr:1", type="uint16")]
EXPECTED = [1000.0, 1001.0]  # what both slaves hold at hr:0..1


@pytest.fixture(scope="module")
def libmodbus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slave_binary(tmp_path_factory.mktemp("libmodbus"))


@pytest.fixture(params=["simulator", "libmodbus"])
async def line(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The port path of a line with a libmodbus-style unit 7 on it (and no unit 9)."""
    if request.param == "simulator":
        slave = RtuSlave.blank(100)
        slave.set_registers("hr", 0, np.arange(1000, 1100))
        sim = ModbusRtuSimulator({HEALTHY: slave})
        sim.faults[HEALTHY].ignore_after_other = 0.5  # libmodbus's default response timeout
        await sim.start()
        try:
            yield sim.path
        finally:
            await sim.stop()
            gc.collect()
        return
    binary = request.getfixturevalue("libmodbus")
    relay = PtyRelay()
    proc = await start_slave(binary, "rtu", relay.far_path, str(HEALTHY))
    try:
        yield relay.path
    finally:
        await stop_slave(proc)
        relay.close()
        gc.collect()


def source(port: str, unit: int, response_timeout: float, **extra: object) -> ModbusRtuSource:
    return ModbusRtuSource(driver="modbus_rtu", port=port, unit=unit, parity="N", baudrate=9600,
                           response_timeout=response_timeout, timeout=2 + 4 * response_timeout, **extra)


async def healthy_share(port: str, response_timeout: float, polls: int, **extra: object) -> tuple[int, int]:
    """Poll unit 7 ``polls`` times while unit 9 is tried without pause; (good polls of unit 7, unit 9 tries)."""
    bus = Shared()  # the two slaves share the port's arbiter, as in a gateway
    healthy = ModbusRtuDriver(source(port, HEALTHY, response_timeout, **extra), TAGS,
                              DriverContext.detached("healthy", len(TAGS), shared=bus))
    dead = ModbusRtuDriver(source(port, DEAD, response_timeout, demote_after=100, **extra), TAGS,
                           DriverContext.detached("dead", len(TAGS), shared=bus))
    await healthy.connect()
    stop = asyncio.Event()

    async def hammer() -> None:  # worse than the engine: the dead unit is on the bus all the time
        while not stop.is_set():
            with contextlib.suppress(DeviceUnavailable):
                await dead.connect()
                await dead.read()

    task = asyncio.create_task(hammer())
    good = 0
    try:
        for _ in range(polls):
            try:
                async with asyncio.timeout(healthy.source.timeout):
                    batch = await healthy.read()
            except (DeviceUnavailable, TimeoutError):
                with contextlib.suppress(DeviceUnavailable, TimeoutError):
                    async with asyncio.timeout(healthy.source.timeout):
                        await healthy.connect()
                continue
            if (batch.quality == Quality.GOOD).all():
                assert batch.values.tolist() == EXPECTED
                good += 1
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        tries = healthy.arbiter.stats.per_unit.get(DEAD, {}).get("timeouts", 0)
        await dead.close()
        await healthy.close()
    return good, tries


@pytest.mark.parametrize("response_timeout", [0.1, 0.3])
async def test_healthy_unit_keeps_its_polls_beside_a_dead_one(line: str, response_timeout: float) -> None:
    polls = 10
    good, dead_tries = await healthy_share(line, response_timeout, polls)
    assert dead_tries >= polls - 1  # the dead unit really was tried before (nearly) every poll of unit 7
    assert good / polls >= 0.9, f"{good} of {polls} polls of unit {HEALTHY} good"


async def test_without_the_bus_pause_the_healthy_unit_loses_its_polls(line: str) -> None:
    """The fault the pause repairs is real for both slaves: without it and without retries, polls are lost."""
    polls = 6
    good, _ = await healthy_share(line, 0.1, polls, silent_after_timeout=0, retries=0)
    assert good / polls < 0.5


def test_every_backoff_is_jittered_also_when_limited_to_the_poll_interval() -> None:
    """Two sources that failed together must not retry in lockstep, also after a good session (limit=poll)."""
    first = [Backoff(30).next(limit=0.2) for _ in range(50)]
    assert all(0.16 <= d <= 0.24 for d in first)
    assert len(set(first)) > 40  # drawn, not the fixed 0.2 s that kept two failing slaves in step
    a, b = Backoff(30), Backoff(30)
    pairs = [(a.next(), b.next()) for _ in range(6)]
    assert all(x != y for x, y in pairs)
    assert 24 <= pairs[-1][0] <= 36  # capped at 30 s, jittered


async def test_with_the_engine_the_healthy_unit_never_goes_disconnected(line: str) -> None:
    """The issue's setup under the real source tasks: unit 7 and a dead unit 9, response_timeout 300 ms.

    Counted, not timed: the run lasts until unit 9 was demoted (three failed connects, each with its retry)
    and tried once more after slow_retry; meanwhile unit 7 must not fail a single poll.
    """
    from types import SimpleNamespace

    from gateway.source import AssetRuntime

    bus = Shared()  # the gateway's: both slaves get the one arbiter of the port

    def runtime(unit: int, **extra: object) -> AssetRuntime:
        cfg = SimpleNamespace(id=f"unit-{unit}", source=source(line, unit, 0.3, poll=0.1, retry_max=1, **extra),
                              tags=TAGS)
        return AssetRuntime(cfg, RTU_SPEC, buffer_seconds=60, state_dir=Path("unused"), shared=bus)

    healthy, dead = runtime(HEALTHY), runtime(DEAD, slow_retry=1.5)
    states: list[str] = []
    healthy._on_state = lambda a: states.append(a.status.state)
    tasks = [asyncio.create_task(healthy.run())]
    for _ in range(100):
        if healthy.status.polls:
            break
        await asyncio.sleep(0.05)
    tasks.append(asyncio.create_task(dead.run()))
    try:
        arbiter = healthy.driver.arbiter
        for _ in range(400):
            stats = arbiter.stats.per_unit.get(DEAD, {})
            if arbiter.health(DEAD).demoted_until is not None and stats.get("demoted_skips", 0) and \
                    dead.status.connect_failures >= 5:
                break
            await asyncio.sleep(0.05)
        assert arbiter.health(DEAD).demoted_until is not None and dead.status.connect_failures >= 5
        assert healthy.status.poll_errors == 0 and healthy.status.tag_errors == 0
        assert states == ["connected"]  # never disconnected
        assert healthy.status.polls > 10
        _ts, values, quality, _has = healthy.ring.last()
        assert quality.tolist() == [Quality.GOOD, Quality.GOOD] and values.tolist() == EXPECTED
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
