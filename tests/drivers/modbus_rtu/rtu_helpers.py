"""Helpers of the Modbus RTU tests: build tags, sources, drivers and pre-filled simulated slaves."""

from __future__ import annotations

from typing import Any

from drivers.modbus.config import ModbusTag
from drivers.modbus.rtu import ModbusRtuDriver
from drivers.modbus.rtu_config import ModbusRtuSource
from gateway.driver import DriverContext, Shared
from simulators.codec import encode_number
from simulators.modbus_rtu_sim import ModbusRtuSimulator, RtuSlave


def tag(name: str, address: str, type_: str, **extra: Any) -> ModbusTag:
    return ModbusTag(name=name, address=address, type=type_, **extra)


def rtu_source(port: str, unit: int, **extra: Any) -> ModbusRtuSource:
    return ModbusRtuSource(driver="modbus_rtu", port=port, unit=unit, **{"parity": "N", **extra})


def slave_with(values: dict[int, tuple[str, float, str]]) -> RtuSlave:
    """A slave whose holding registers hold ``{offset: (type, value, byte_order)}``, encoded by the simulator."""
    slave = RtuSlave.blank()
    for offset, (type_, value, order) in values.items():
        slave.set_registers("hr", offset, encode_number(type_, value, order))
    return slave


def driver(sim: ModbusRtuSimulator, unit: int, tags: list[ModbusTag], *, shared: Shared | None = None,
           **extra: Any) -> ModbusRtuDriver:
    """A driver of ``unit`` on the simulator's port; drivers given one ``shared`` share its arbiter, as in a gateway."""
    return ModbusRtuDriver(rtu_source(sim.path, unit, **extra), tags,
                           DriverContext.detached(f"unit-{unit}", len(tags), shared=shared))
