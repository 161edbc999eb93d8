"""Several slaves on one port under the real engine: isolation of a silent slave, bus-load warning,
RTU over TCP, and the config rules of RTU sources."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError
from rtu_helpers import driver, rtu_source, tag

import drivers.modbus
from drivers.modbus.rtu import RTU_SPEC, ModbusRtuDriver, ModbusRtuTcpDriver
from drivers.modbus.rtu_config import ModbusRtuSource, ModbusRtuTcpSource
from gateway.batch import Quality
from gateway.config.loader import load_config
from gateway.driver import DeviceUnavailable, DriverContext, Shared
from gateway.source import AssetRuntime
from simulators.modbus_rtu_sim import ModbusRtuSimulator

TAGS = [tag("f", "40001", "float32"), tag("i", "40003", "int16")]


#: the resources a gateway's drivers share: the runtimes of one test get the one arbiter of their port
BUS = Shared()


def runtime(asset_id: str, source: ModbusRtuSource) -> AssetRuntime:
    cfg = SimpleNamespace(id=asset_id, source=source, tags=TAGS)
    return AssetRuntime(cfg, RTU_SPEC, buffer_seconds=60, state_dir=Path("unused"), shared=BUS)


async def test_healthy_slaves_keep_their_rate_while_one_is_silent(line: ModbusRtuSimulator) -> None:
    line.faults[3].silent = True
    poll = 0.1
    # these simulated slaves do not wait for other units' answers, so no bus pause after a timeout is needed:
    # a probe of the silent slave costs response_timeout only (the pause is tested in test_rtu_recovery.py)
    assets = {
        n: runtime(f"slave-{n}", rtu_source(line.path, n, poll=poll, response_timeout=0.3, timeout=1.0,
                                            demote_after=2, slow_retry=1.5, silent_after_timeout=0))
        for n in (1, 2, 3)
    }  # fmt: skip
    tasks = [asyncio.create_task(a.run()) for a in assets.values()]
    try:
        arbiter = assets[1].driver.arbiter
        assert assets[3].driver.arbiter is arbiter  # one port, one arbiter
        for _ in range(200):  # until the silent slave is demoted (2 failed probes, 1 s backoff apart)
            if arbiter.health(3).demoted_until is not None:
                break
            await asyncio.sleep(0.05)
        assert arbiter.health(3).demoted_until is not None
        before = {n: assets[n].status.polls for n in (1, 2)}
        probes = line.requests[3]
        window = 4.0  # spans at least two slow retries of the silent slave
        await asyncio.sleep(window)
        rates = {n: (assets[n].status.polls - before[n]) / (window / poll) for n in (1, 2)}
        assert min(rates.values()) >= 0.9, rates
        assert 1 <= line.requests[3] - probes <= 4  # slow retries only, not 40 polls' worth of timeouts
        assert assets[3].status.state == "disconnected" and assets[3].status.polls == 0
        for n in (1, 2):
            _ts, values, quality, _has = assets[n].ring.last()
            assert quality.tolist() == [Quality.GOOD, Quality.GOOD]
            assert values.tolist() == [n * 1.5, -n]
        line.faults[3].silent = False  # the slave comes back: picked up at its next slow retry
        for _ in range(200):
            if assets[3].status.polls > 0:
                break
            await asyncio.sleep(0.05)
        assert assets[3].status.state == "connected"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_start_up_warns_when_the_baud_rate_cannot_carry_the_poll_rates(
    line: ModbusRtuSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    wide = [tag("block", "hr:0", "string", length=100)]
    bus = Shared()
    drivers = [ModbusRtuDriver(rtu_source(line.path, n, poll=0.1, baudrate=9600), wide,
                               DriverContext.detached(f"unit{n}", 1, shared=bus)) for n in (1, 2)]
    with caplog.at_level(logging.WARNING, logger="drivers.modbus.arbiter"):
        await drivers[0].connect()
    for d in drivers:
        await d.close()
    (record,) = [r for r in caplog.records if "wire time" in r.message]
    assert record.levelno == logging.WARNING
    # 8 bytes out + 5 + 200 back = 213 chars x 10 bits (8N1) / 9600 = 221.9 ms + 2 gaps of 3.65 ms, every 0.1 s
    assert "213 chars x 10 bits / 9600 baud = 221.9 ms + 2 x 3.65 ms gaps = 229.2 ms per poll -> 2292 ms/s" in record.message
    assert "needs 4.58 s of wire time per second (458 %)" in record.message
    assert "polls will be skipped" in record.message


async def test_no_warning_when_the_bus_has_room(line: ModbusRtuSimulator, caplog: pytest.LogCaptureFixture) -> None:
    d = ModbusRtuDriver(rtu_source(line.path, 1, poll=1.0, baudrate=19200), TAGS, DriverContext.detached("test", len(TAGS)))
    with caplog.at_level(logging.WARNING, logger="drivers.modbus.arbiter"):
        await d.connect()
    await d.close()
    assert not [r for r in caplog.records if "wire time" in r.message]
    assert d.arbiter.load().seconds_per_second == pytest.approx((8 + 11) * 10 / 19200 + 2 * 3.5 * 10 / 19200)


async def test_rtu_over_tcp_reads_and_reports_a_closed_converter() -> None:
    from rtu_helpers import slave_with

    sim = ModbusRtuSimulator({4: slave_with({0: ("float32", -2.5, "CDAB"), 2: ("int16", 9, "ABCD")})})
    port = await sim.start_tcp()
    d = ModbusRtuTcpDriver(
        ModbusRtuTcpSource(driver="modbus_rtu_tcp", host="127.0.0.1", port=port, unit=4, response_timeout=0.2),
        [tag("f", "40001", "float32", byte_order="CDAB"), tag("i", "40003", "int16")],
        DriverContext.detached("converter", 2),
    )
    try:
        await d.connect()
        batch = await d.read()
        assert batch.values.tolist() == [-2.5, 9.0] and (batch.quality == Quality.GOOD).all()
        sim.faults[4].crc_errors = 1.0
        assert (await d.read()).errors.tolist() == [1002, 1002]
        sim.faults[4].crc_errors = 0.0
        await sim.stop()
        await asyncio.sleep(0.05)
        with pytest.raises(DeviceUnavailable, match="127.0.0.1"):
            await d.read()
        with pytest.raises(DeviceUnavailable, match="cannot connect to 127.0.0.1"):
            await d.connect()
    finally:
        await d.close()
        await sim.stop()


def test_sample_config_loads_and_slaves_on_one_port_share_an_arbiter() -> None:
    config = load_config(Path(drivers.modbus.__file__).parent / "rtu_sample.yaml", env={})
    rtu = [a for a in config.assets if a.source.driver == "modbus_rtu"]
    assert [a.source.unit for a in rtu] == [1, 2, 7]
    assert rtu[1].source.parity == "E" and rtu[1].source.baudrate == 19200
    bus = Shared()  # one per gateway
    built = [ModbusRtuDriver(a.source, a.tags, DriverContext.detached(a.id, len(a.tags), shared=bus)) for a in rtu]
    assert built[0].arbiter is built[1].arbiter is built[2].arbiter
    assert len(built[0].arbiter.load().lines) == 3


def test_config_rules() -> None:
    with pytest.raises(ValidationError, match="Modbus RTU needs 8 data bits"):
        ModbusRtuSource(driver="modbus_rtu", port="/dev/ttyUSB0", bytesize=7)
    with pytest.raises(ValidationError, match="at least twice response_timeout"):
        ModbusRtuSource(driver="modbus_rtu", port="/dev/ttyUSB0", response_timeout=1.5, timeout=2)
    with pytest.raises(ValidationError):
        ModbusRtuSource(driver="modbus_rtu", port="/dev/ttyUSB0", unit=0)  # 0 is broadcast: nothing answers
    assert ModbusRtuSource(driver="modbus_rtu", port="/dev/ttyUSB0").parity == "E"


def test_one_port_with_two_line_settings_is_refused(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyFAKE")
    bus = Shared()
    context = DriverContext.detached("keep", len(TAGS), shared=bus)
    keep = ModbusRtuDriver(ModbusRtuSource(driver="modbus_rtu", port=port, baudrate=9600), TAGS, context)
    with pytest.raises(ValueError, match="configured twice with different line settings"):
        ModbusRtuDriver(ModbusRtuSource(driver="modbus_rtu", port=port, baudrate=19200, unit=2), TAGS,
                        DriverContext.detached("other", len(TAGS), shared=bus))
    assert keep.arbiter is not None
    assert np.all(context.meta.float32 == [True, False])


async def test_parity_written_as_a_word_or_a_letter_is_one_line_on_one_arbiter(line: ModbusRtuSimulator) -> None:
    """``none`` (an instrument manual's word) and ``N`` (a Modbus manual's letter) are the same line: the two
    slaves share the port's arbiter, and both read the simulator over it."""
    bus = Shared()  # one gateway's
    words = driver(line, 1, TAGS, shared=bus, parity="none")
    letter = driver(line, 2, TAGS, shared=bus, parity="N")
    try:
        assert words.source.parity == letter.source.parity == "N"
        assert words.arbiter is letter.arbiter
        await words.connect()
        await letter.connect()
        assert (await words.read()).values.tolist() == [1.5, -1.0]
        assert (await letter.read()).values.tolist() == [3.0, -2.0]
    finally:
        await words.close()
        await letter.close()
