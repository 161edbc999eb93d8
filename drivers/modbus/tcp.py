"""Modbus TCP driver (``driver: modbus_tcp``): pymodbus ``AsyncModbusTcpClient`` under the shared Modbus base."""

from __future__ import annotations

from typing import ClassVar

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.base import ModbusDriverBase
from drivers.modbus.config import ModbusTag, ModbusTcpSource


class ModbusTcpDriver(ModbusDriverBase):
    """Reads holding/input registers, coils and discrete inputs of one Modbus TCP device.

    ``ModbusTcpDriver(source, tags)`` compiles the tags into ``self.plan`` once; see
    :class:`~drivers.modbus.base.ModbusDriverBase` for ``connect / read / write / close``.
    pymodbus's own reconnects and retries are disabled: the engine owns reconnect, backoff and timeouts.
    """

    name: ClassVar[str] = "modbus_tcp"
    SourceConfig: ClassVar[type[ModbusTcpSource]] = ModbusTcpSource
    TagConfig: ClassVar[type[ModbusTag]] = ModbusTag

    source: ModbusTcpSource

    @property
    def endpoint(self) -> str:
        return f"{self.source.host}:{self.source.port} unit {self.source.unit}"

    def _make_client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(
            self.source.host,
            port=self.source.port,
            timeout=self.source.timeout,  # connect and per-request response timeout
            retries=0,
            reconnect_delay=0,  # 0 disables pymodbus's background reconnect task
            reconnect_delay_max=0,
            trace_connect=self._on_connection_change,
            name=f"modbus_tcp {self.source.host}:{self.source.port}",
        )
