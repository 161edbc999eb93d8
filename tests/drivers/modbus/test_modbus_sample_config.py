"""The sample config shipped next to the driver loads, and YAML quirks of addresses are handled."""

from __future__ import annotations

from pathlib import Path

import pytest

import drivers.modbus
from drivers.modbus.address import ModbusAddress, Table
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config
from gateway.driver import DriverContext

SAMPLE = Path(drivers.modbus.__file__).parent / "sample.yaml"


def test_sample_config_loads_and_compiles() -> None:
    config = load_config(SAMPLE, env={})
    (asset,) = config.assets
    refs = {t.name: t.ref for t in asset.tags}
    assert refs["running"] == ModbusAddress(Table.COIL, 0)
    assert refs["door_open"] == ModbusAddress(Table.HOLDING_REGISTER, 9, 3)
    assert refs["spare_bit"] == ModbusAddress(Table.HOLDING_REGISTER, 9, 10)  # YAML float 40010.10 kept as written
    assert refs["setpoint"] == ModbusAddress(Table.HOLDING_REGISTER, 60)
    assert refs["counter64"] == ModbusAddress(Table.HOLDING_REGISTER, 99)
    driver = ModbusTcpDriver(asset.source, asset.tags, DriverContext.detached("test", len(asset.tags)))
    assert [str(r).split(" ")[0] for r in driver.plan.requests] == ["co:0+8", "di:0+2", "ir:0+12", "hr:0+61", "hr:99+4"]


def test_unquoted_leading_zero_address_is_an_error_on_its_line(tmp_path: Path) -> None:
    text = SAMPLE.read_text().replace('address: "00001"', "address: 00001")
    bad = tmp_path / "plant.yaml"
    bad.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "address: 00001" in s)
    with pytest.raises(ConfigError) as err:
        load_config(bad, env={})
    message = str(err.value)
    assert f"plant.yaml:{line}:" in message and "assets[0].tags[3].address" in message
    assert '"00001"' in message
