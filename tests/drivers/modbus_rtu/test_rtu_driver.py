"""The Modbus RTU driver against simulated slaves on a pty: decoding, bad frames, exceptions, silence."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from rtu_helpers import driver, slave_with, tag

from drivers.modbus.rtu_frame import CRC_ERROR, TRUNCATED_FRAME
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext
from simulators.codec import encode_string
from simulators.modbus_rtu_sim import ModbusRtuSimulator

TYPED = {
    0: ("float32", 123.25, "CDAB"),
    2: ("int32", -70000, "BADC"),
    4: ("uint64", 2**40 + 5, "DCBA"),
    8: ("float64", -1.0e-3, "ABCD"),
    12: ("int16", -12, "ABCD"),
    13: ("uint16", 0xBEEF, "BADC"),
    14: ("int64", -(2**35), "CDAB"),
}


async def test_every_type_and_byte_order_decodes_through_the_shared_path() -> None:
    slave = slave_with(TYPED)
    slave.set_registers("hr", 20, encode_string("RTU-7", 4))
    slave.set_registers("hr", 30, [0b1000_0000_0000_1001])
    slave.set_registers("ir", 5, [250])
    slave.set_bits("co", 3, [True])
    slave.set_bits("di", 0, [False, True])
    sim = ModbusRtuSimulator({5: slave})
    await sim.start()
    tags = [tag(f"t{o}", f"hr:{o}", t, byte_order=b) for o, (t, _v, b) in TYPED.items()] + [
        tag("name", "hr:20", "string", length=4),
        tag("b0", "40031.0", "bit"),
        tag("b15", "40031.15", "bit"),
        tag("b1", "40031.1", "bit"),
        tag("temp", "30006", "int16", scale=0.1),
        tag("lamp", "co:3", "bool"),
        tag("door", "10002", "bool"),
    ]
    d = driver(sim, 5, tags)
    try:
        await d.connect()
        batch = await d.read()
    finally:
        await d.close()
        await sim.stop()
    assert (batch.quality == Quality.GOOD).all()
    got = dict(zip(d.plan.names, batch.values.tolist()))
    for offset, (_t, value, _b) in TYPED.items():
        assert math.isclose(got[f"t{offset}"], value, rel_tol=1e-12), offset
    assert batch.strings[d.plan.names.index("name")] == "RTU-7"
    assert (got["b0"], got["b15"], got["b1"]) == (1.0, 1.0, 0.0)
    assert got["temp"] == pytest.approx(25.0)
    assert (got["lamp"], got["door"]) == (1.0, 1.0)


async def test_crc_errors_never_give_a_wrong_value(line: ModbusRtuSimulator) -> None:
    # retries=0: every corrupt answer shows as a bad poll (with retries most polls would be rescued)
    d = driver(line, 1, [tag("f", "40001", "float32"), tag("i", "40003", "int16")], demote_after=100, retries=0)
    await d.connect()
    line.faults[1].crc_errors = 0.5
    good = bad = 0
    try:
        for _ in range(40):
            batch = await d.read()
            if batch.quality[0] == Quality.GOOD:
                good += 1
                assert batch.values.tolist() == [1.5, -1.0]
            else:
                bad += 1
                assert np.isnan(batch.values).all() and (batch.errors == CRC_ERROR).all()
                assert "CRC error" in batch.error_text[CRC_ERROR]
    finally:
        await d.close()
    assert good > 5 and bad > 5
    assert d.arbiter.stats.crc_errors == bad


async def test_stray_bytes_before_a_frame_are_skipped_and_counted(line: ModbusRtuSimulator) -> None:
    line.faults[2].stray = b"\x00\x02\x03\xff\x55"  # noise that even starts like unit 2's answer
    d = driver(line, 2, [tag("f", "40001", "float32"), tag("i", "40003", "int16")])
    await d.connect()
    try:
        for _ in range(10):
            batch = await d.read()
            assert (batch.quality == Quality.GOOD).all()
            assert batch.values.tolist() == [3.0, -2.0]
    finally:
        await d.close()
    assert d.arbiter.stats.stray_bytes == 11 * 5  # probe + 10 reads, 5 stray bytes each


async def test_truncated_frame_is_bad_not_wrong(line: ModbusRtuSimulator) -> None:
    d = driver(line, 3, [tag("f", "40001", "float32")], retries=0)
    await d.connect()
    line.faults[3].truncate = 1.0
    try:
        batch = await d.read()
        assert batch.quality[0] == Quality.BAD and batch.errors[0] == TRUNCATED_FRAME
        assert "truncated answer from unit 3" in batch.error_text[TRUNCATED_FRAME]
        line.faults[3].truncate = 0.0
        batch = await d.read()  # the link resynchronises on the next frame
        assert batch.quality[0] == Quality.GOOD and batch.values[0] == 4.5
    finally:
        await d.close()
    assert d.arbiter.stats.truncated == 1


@pytest.mark.parametrize("code", list(range(1, 9)) + [10, 11])
async def test_exception_codes_mark_the_request_bad_with_their_code(line: ModbusRtuSimulator, code: int) -> None:
    d = driver(line, 1, [tag("f", "40001", "float32"), tag("lamp", "co:0", "bool")])
    await d.connect()
    line.faults[1].exception = code
    try:
        batch = await d.read()
    finally:
        await d.close()
    assert (batch.quality == Quality.BAD).all() and (batch.errors == code).all()
    assert batch.error_text[code].startswith(f"Modbus exception {code} (")
    assert d.arbiter.health(1).failures == 0  # an exception is an answer: the slave is alive


async def test_read_outside_the_table_is_exception_2_and_the_rest_of_the_poll_stands(line: ModbusRtuSimulator) -> None:
    d = driver(line, 1, [tag("f", "40001", "float32"), tag("far", "hr:5000", "int16")])
    await d.connect()
    try:
        batch = await d.read()
    finally:
        await d.close()
    assert batch.quality.tolist() == [Quality.GOOD, Quality.BAD]
    assert batch.values[0] == 1.5 and batch.errors[1] == 2


async def test_slow_slave_within_its_timeout_is_fine_beyond_it_is_unavailable(line: ModbusRtuSimulator) -> None:
    d = driver(line, 2, [tag("i", "40003", "int16")], response_timeout=0.3, timeout=1.0)
    await d.connect()
    try:
        line.faults[2].delay = 0.1
        assert (await d.read()).values[0] == -2
        line.faults[2].delay = 0.5
        with pytest.raises(DeviceUnavailable, match="no answer from unit 2 on .* within 0.3 s"):
            await d.read()
        line.faults[2].delay = 0.0
        await d.read()  # the late answer of the timed-out request is dropped, not taken for this one
        batch = await d.read()
        assert batch.values[0] == -2 and batch.quality[0] == Quality.GOOD
    finally:
        await d.close()


async def test_silent_slave_is_demoted_then_retried_once_per_slow_retry(line: ModbusRtuSimulator) -> None:
    line.faults[3].silent = True
    d = driver(line, 3, [tag("f", "40001", "float32")], response_timeout=0.05, timeout=0.5,
               demote_after=2, slow_retry=0.4)
    with pytest.raises(DeviceUnavailable, match="no answer from unit 3"):
        await d.connect()  # the probe finds nobody
    with pytest.raises(DeviceUnavailable, match="no answer from unit 3"):
        await d.connect()
    sent = line.requests[3]
    with pytest.raises(DeviceUnavailable, match="unit 3 on .* is demoted after 2 failed requests in a row"):
        await d.connect()
    assert line.requests[3] == sent  # demoted: nothing went on the wire
    line.faults[3].silent = False
    await asyncio.sleep(0.45)
    await d.connect()  # slow retry due: the probe goes out and the slave is back
    assert (await d.read()).values[0] == 4.5
    await d.close()
    assert d.arbiter.stats.demoted_skips == 1


async def test_port_that_does_not_exist_is_a_clear_device_unavailable() -> None:
    from drivers.modbus.rtu import ModbusRtuDriver
    from drivers.modbus.rtu_config import ModbusRtuSource

    d = ModbusRtuDriver(ModbusRtuSource(driver="modbus_rtu", port="/dev/ttyNOPE9", parity="N"), [tag("f", "40001", "int16")],
                        DriverContext.detached("test", 1))
    with pytest.raises(DeviceUnavailable, match="cannot open serial port /dev/ttyNOPE9"):
        await d.connect()
    await d.close()


async def test_write_back_goes_through_the_bus_arbiter(line: ModbusRtuSimulator) -> None:
    tags = [tag("sp", "40011", "float32", byte_order="CDAB", writable=True),
            tag("word", "40013", "uint16", writable=True), tag("lamp", "co:4", "bool", writable=True)]
    d = driver(line, 2, tags)
    await d.connect()
    try:
        await d.write("sp", 61.25)
        await d.write("word", 513)
        await d.write("lamp", True)
        batch = await d.read()
    finally:
        await d.close()
    assert batch.values.tolist() == [61.25, 513.0, 1.0]
    regs = line.slaves[2].tables["hr"][10:13].tolist()
    assert regs == [0x0000, 0x4275, 513]  # CDAB: low word first, as the simulator sees it
    assert bool(line.slaves[2].tables["co"][4])
