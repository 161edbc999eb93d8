"""Modbus TCP driver (``driver: modbus_tcp``): :class:`~drivers.modbus.tcp_client.MbapClient` under the shared base."""

from __future__ import annotations

from typing import ClassVar

from typing import Any

from drivers.modbus.base import ModbusDriverBase
from drivers.modbus.config import ModbusTag, ModbusTcpSource
from drivers.modbus.tcp_client import MbapClient, TcpCounters


class ModbusTcpDriver(ModbusDriverBase):
    """Reads holding/input registers, coils and discrete inputs of one Modbus TCP device.

    ``ModbusTcpDriver(source, tags)`` compiles the tags into ``self.plan`` once; see
    :class:`~drivers.modbus.base.ModbusDriverBase` for ``connect / read / write / close``.
    The engine owns reconnect, backoff and timeouts; the client checks that every answer belongs to its
    request (see :mod:`drivers.modbus.tcp_client`) and counts what it saw in ``self.counters``.
    """

    name: ClassVar[str] = "modbus_tcp"
    SourceConfig: ClassVar[type[ModbusTcpSource]] = ModbusTcpSource
    TagConfig: ClassVar[type[ModbusTag]] = ModbusTag

    source: ModbusTcpSource

    def __init__(self, source: Any, tags: list[ModbusTag]) -> None:
        super().__init__(source, tags)
        #: requests, answers, timeouts, mismatched and stale answers, for the status API (kept across reconnects)
        self.counters = TcpCounters()

    @property
    def endpoint(self) -> str:
        return f"{self.source.host}:{self.source.port} unit {self.source.unit}"

    def _make_client(self) -> MbapClient:
        return MbapClient(
            self.source.host,
            self.source.port,
            timeout=self.source.timeout,  # connect and per-request response timeout
            counters=self.counters,
            name=f"{self.source.host}:{self.source.port}",
        )
