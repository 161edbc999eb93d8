"""The Modbus drivers against libmodbus, a stack nobody here wrote: its answers pass every answer check.

The strict checks (transaction id, unit, function code, byte count, count) must not reject a correct
device's answers. ``libmodbus_slave.c`` serves hr i = 1000 + i, ir i = 2000 + i, coil i = (i % 3 == 0),
discrete input i = (i % 2 == 1), as unit 7, over Modbus TCP and over RTU (a pty relayed to the gateway's).
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from helpers import free_port
from libmodbus_slave import PtyRelay, slave_binary, start_slave, stop_slave

from drivers.modbus.config import ModbusTag, ModbusTcpSource
from drivers.modbus.rtu import ModbusRtuDriver
from drivers.modbus.rtu_config import ModbusRtuSource
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.batch import Quality
from gateway.driver import DriverContext

UNIT = 7
TAGS = [
    ModbusTag(name="h0", address="hr:0", type="uint16"),
    ModbusTag(name="h_wide", address="hr:2", type="uint32"),
    ModbusTag(name="h_far", address="hr:90", type="uint16"),
    ModbusTag(name="i5", address="ir:5", type="uint16"),
    ModbusTag(name="c0", address="co:0", type="bool"),
    ModbusTag(name="c1", address="co:1", type="bool"),
    ModbusTag(name="c9", address="co:9", type="bool"),
    ModbusTag(name="d1", address="di:1", type="bool"),
    ModbusTag(name="d2", address="di:2", type="bool"),
    ModbusTag(name="setpoint", address="hr:10", type="uint16"),
]
EXPECTED = [1000.0, float((1002 << 16) | 1003), 1090.0, 2005.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1010.0]


@pytest.fixture(scope="module")
def libmodbus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slave_binary(tmp_path_factory.mktemp("libmodbus"))


async def check(driver) -> None:
    await driver.connect()
    try:
        for _ in range(3):
            batch = await driver.read()
            assert (batch.quality == Quality.GOOD).all(), batch.error_text
            assert batch.values.tolist() == EXPECTED
        assert await driver.write("setpoint", 555) == 555  # FC6 and its echo, then the read-back
        batch = await driver.read()
        assert batch.values[-1] == 555.0
    finally:
        await driver.close()
    counters = driver.counters()
    assert counters["mismatched_answers"] == 0


@pytest.mark.parametrize("max_in_flight", [1, 8])
async def test_modbus_tcp_against_libmodbus(libmodbus: Path, max_in_flight: int) -> None:
    """libmodbus serves one request at a time per connection; requests sent back to back (``max_in_flight``)
    wait in the socket and are answered in order, each with its own transaction id: the values are right."""
    port = free_port()
    proc = await start_slave(libmodbus, "tcp", str(port), str(UNIT))
    try:
        driver = ModbusTcpDriver(ModbusTcpSource(driver="modbus_tcp", host="127.0.0.1", port=port, unit=UNIT,
                                                 timeout=2, max_in_flight=max_in_flight), TAGS, DriverContext.detached("test", len(TAGS)))
        await check(driver)
        assert driver.counters()["stale_answers"] == 0 and driver.counters()["timeouts"] == 0
    finally:
        await stop_slave(proc)


async def test_modbus_rtu_against_libmodbus(libmodbus: Path) -> None:
    relay = PtyRelay()
    proc = await start_slave(libmodbus, "rtu", relay.far_path, str(UNIT))
    try:
        driver = ModbusRtuDriver(ModbusRtuSource(driver="modbus_rtu", port=relay.path, unit=UNIT, parity="N",
                                                 baudrate=9600, timeout=2), TAGS, DriverContext.detached("test", len(TAGS)))
        await check(driver)
        assert driver.counters()["timeouts"] == 0
    finally:
        await stop_slave(proc)
        relay.close()
        gc.collect()
