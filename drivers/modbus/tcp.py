"""Modbus TCP driver (``driver: modbus_tcp``): :class:`~drivers.modbus.tcp_client.MbapClient` under the shared base."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU, bit_message, register_message

from drivers.modbus.address import Table
from drivers.modbus.base import BadResponse, ModbusDriverBase, check
from drivers.modbus.config import ModbusTag, ModbusTcpSource
from drivers.modbus.tcp_client import MbapClient, TcpCounters
from gateway.batch import Batch
from gateway.driver import DeviceUnavailable, DriverContext, DriverSpec


class ModbusTcpDriver(ModbusDriverBase):
    """Reads holding/input registers, coils and discrete inputs of one Modbus TCP device.

    ``ModbusTcpDriver(source, tags, context)`` compiles the tags into ``self.plan`` once; see
    :class:`~drivers.modbus.base.ModbusDriverBase` for ``connect / read / write / close``.
    The engine owns reconnect, backoff and timeouts; the client checks that every answer belongs to its
    request (see :mod:`drivers.modbus.tcp_client`) and counts what it saw in ``self.stats``.
    """

    source: ModbusTcpSource

    def __init__(self, source: Any, tags: list[ModbusTag], context: DriverContext) -> None:
        super().__init__(source, tags, context)
        #: requests, answers, timeouts, mismatched and stale answers, for the status API (kept across reconnects)
        self.stats = TcpCounters()
        #: with ``max_in_flight`` > 1: the plan's requests in windows sent in one write each
        #: (index of the window's first request, its request PDUs, the positions of its tags)
        self._windows = self._request_windows(source.max_in_flight) if source.max_in_flight > 1 else None

    async def read(self) -> Batch:
        """:meth:`ModbusDriverBase.read`, or with ``max_in_flight`` > 1 up to that many requests in flight: each
        window is one write, its answers matched by transaction id (:meth:`MbapClient.execute_many`); each
        tag's ``ts`` is when its window's last answer came."""
        client = self._client
        if self._windows is None or client is None:
            return await super().read()
        plan = self.plan
        batch = Batch.empty(len(plan), 0)
        answers: list[ModbusPDU | BadResponse] = []
        for first, pdus, positions in self._windows:
            if not client.connected:
                raise DeviceUnavailable(f"connection to {self.endpoint} was closed")
            try:
                answers += await client.execute_many(pdus)
            except ModbusException as exc:
                raise DeviceUnavailable(self._failure_text(client, plan.requests[first], exc)) from exc
            batch.ts[positions] = time.time_ns()
        self.decode_answers(plan, answers, batch, self._words)
        return batch

    def _request_windows(self, window: int) -> list[tuple[int, list[ModbusPDU], np.ndarray]]:
        kinds = {Table.HOLDING_REGISTER: register_message.ReadHoldingRegistersRequest,
                 Table.INPUT_REGISTER: register_message.ReadInputRegistersRequest,
                 Table.COIL: bit_message.ReadCoilsRequest,
                 Table.DISCRETE_INPUT: bit_message.ReadDiscreteInputsRequest}  # fmt: skip
        requests = self.plan.requests
        pdus = [kinds[r.table](address=r.start, count=r.count, dev_id=self.source.unit) for r in requests]
        return [(k, pdus[k : k + window], np.concatenate([r.positions for r in requests[k : k + window]]))
                for k in range(0, len(requests), window)]  # fmt: skip

    @property
    def endpoint(self) -> str:
        return f"{self.source.host}:{self.source.port} unit {self.source.unit}"

    def _make_client(self) -> MbapClient:
        return MbapClient(
            self.source.host,
            self.source.port,
            timeout=self.source.timeout,  # connect and per-request response timeout
            counters=self.stats,
            name=f"{self.source.host}:{self.source.port}",
        )

    def counters(self) -> dict[str, int]:
        return self.stats.as_dict()


SPEC = DriverSpec("modbus_tcp", ModbusTcpSource, ModbusTag, ModbusTcpDriver, check)
