"""Modbus TCP driver (``driver: modbus_tcp``): pymodbus ``AsyncModbusTcpClient`` under the shared Modbus base."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from drivers.modbus.base import ModbusDriverBase
from drivers.modbus.config import ModbusTag, ModbusTcpSource


@dataclass(slots=True)
class TcpCounters:
    """What the status API shows as ``driver_counters`` (monotonic since the driver was created)."""

    bad_frames: int = 0  # answers pymodbus could not decode (the connection is dropped, the poll fails)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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

    def __init__(self, source: Any, tags: list[ModbusTag]) -> None:
        super().__init__(source, tags)
        self.counters = TcpCounters()

    @property
    def endpoint(self) -> str:
        return f"{self.source.host}:{self.source.port} unit {self.source.unit}"

    def _make_client(self) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(
            self.source.host,
            port=self.source.port,
            timeout=self.source.timeout,  # connect and per-request response timeout
            retries=0,
            reconnect_delay=0,  # 0 disables pymodbus's background reconnect task
            reconnect_delay_max=0,
            trace_connect=self._on_connection_change,
            name=f"modbus_tcp {self.source.host}:{self.source.port}",
        )
        self._count_bad_frames(client)
        return client

    def _count_bad_frames(self, client: AsyncModbusTcpClient) -> None:
        """An answer pymodbus cannot decode raises out of its protocol's ``data_received``, which asyncio
        logs as a ~20-line "Fatal error" traceback per frame. Count it instead, fail the request in flight
        at once (the stream's framing is lost) and drop the connection: the engine reconnects as for any
        lost connection, and logs that once."""
        ctx = getattr(client, "ctx", None)  # pymodbus 3.16: the TransactionManager is the protocol
        decode = getattr(ctx, "callback_data", None)
        if decode is None:
            return

        def guarded(data: bytes, addr: tuple | None = None) -> int:
            try:
                return decode(data, addr=addr)
            except ModbusException as exc:
                self.counters.bad_frames += 1
                pending = ctx.response_future
                if isinstance(pending, asyncio.Future) and not pending.done():
                    pending.set_exception(ConnectionException(f"undecodable answer from {self.endpoint} ({exc})"))
                    pending.exception()
                if ctx.transport is not None:
                    ctx.transport.close()
                return len(data)

        ctx.callback_data = guarded  # type: ignore[method-assign]
