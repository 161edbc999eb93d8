"""Modbus RTU drivers: ``driver: modbus_rtu`` (serial port) and ``driver: modbus_rtu_tcp`` (RTU frames over TCP).

Both are :class:`~drivers.modbus.base.ModbusDriverBase` drivers, so plan compilation, decoding, byte orders,
addressing and error mapping are the very code the Modbus TCP driver runs. Only the client differs: an
:class:`RtuClient` offers pymodbus's client API (``read_holding_registers(...)``, ``write_register(...)``,
...), encodes and decodes the PDUs with pymodbus, and sends every frame through the shared
:class:`~drivers.modbus.arbiter.BusArbiter` of its port, which owns framing, CRC, timing and demotion.

Why not pymodbus's own serial client: it has one timeout per client (we need one per slave on a shared
port), it reports a CRC error, a truncated frame and silence alike as "no response" after the full
timeout, and its retry / reconnect logic would fight the engine's. The PDU layer it gets right is reused.
"""

from __future__ import annotations

import struct
from abc import abstractmethod
from typing import Any

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.decoders import DecodePDU

from drivers.modbus.arbiter import BusArbiter, SlaveLoad, SlavePolicy, UnitCounters, arbiter_for
from drivers.modbus.base import BadResponse, ModbusDriverBase, check
from drivers.modbus.check import MISMATCHED_ANSWER, answer_mismatch
from drivers.modbus.config import ModbusTag
from drivers.modbus.rtu_config import ModbusRtuSource, ModbusRtuTcpSource
from drivers.modbus.rtu_frame import MALFORMED_FRAME, bits_per_char, silent_interval
from drivers.modbus.rtu_link import SerialLink, TcpLink
from gateway.config.common import serial_resource
from gateway.driver import DeviceUnavailable, DriverContext, DriverSpec, Shared


class RtuClient(ModbusClientMixin):
    """The subset of pymodbus's async client that :class:`ModbusDriverBase` uses, over a bus arbiter.

    ``connect()`` opens (or joins) the shared link; ``close()`` leaves it; every request method of
    :class:`~pymodbus.client.mixin.ModbusClientMixin` returns an awaitable ``ModbusPDU``.
    """

    def __init__(self, arbiter: BusArbiter, owner: Any, unit: int, policy: SlavePolicy) -> None:
        super().__init__()
        self.arbiter = arbiter
        self.owner = owner
        self.unit = unit
        self.policy = policy
        self._decoder = DecodePDU(is_server=False)
        self._joined = False

    @property
    def connected(self) -> bool:
        return self._joined and self.arbiter.link_ok

    async def connect(self) -> bool:
        await self.arbiter.acquire(self.owner)
        self._joined = True
        return True

    def register(self, custom_response_class: type[ModbusPDU]) -> None:
        """Decode responses of this function code with ``custom_response_class`` (as pymodbus's clients do)."""
        self._decoder.register(custom_response_class)

    def close(self) -> None:
        if self._joined:
            self._joined = False
            self.arbiter.release(self.owner)

    async def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        """Send one request to this client's unit (``device_id`` arguments are ignored: one client, one slave)."""
        if no_response_expected:
            raise NotImplementedError("broadcast requests (no response expected) are not supported over RTU")
        pdu = bytes((request.function_code,)) + request.encode()
        answer = await self.arbiter.transact(self.unit, pdu, self.policy)
        why = answer_mismatch(pdu, answer)
        if why is not None:
            self.arbiter.stats.count(self.unit, "mismatched_answers")
            raise BadResponse(
                MISMATCHED_ANSWER,
                f"answer of unit {self.unit} on {self.arbiter.name} does not match its request: {why}",
            )
        try:
            response = self._decoder.decode(answer)
        except (ModbusException, ValueError, IndexError, struct.error):
            response = None
        if response is None:
            raise BadResponse(MALFORMED_FRAME, f"answer of unit {self.unit} on {self.arbiter.name} cannot be decoded")
        return response


class _RtuDriverBase(ModbusDriverBase):
    """Shared part of the two RTU drivers: bus registration, probe on connect."""

    source: ModbusRtuSource | ModbusRtuTcpSource

    def __init__(self, source: Any, tags: list[ModbusTag], context: DriverContext) -> None:
        super().__init__(source, tags, context)
        self.policy = SlavePolicy(
            source.response_timeout,
            source.demote_after,
            source.slow_retry,
            retries=source.retries,
            silent_after_timeout=source.silent_after_timeout,
        )
        self.arbiter = self._arbiter(context.shared)
        self.arbiter.register(self, SlaveLoad(source.unit, source.poll, self._frames()))
        #: this slave's bus counters (CRC errors, timeouts, stray bytes ...) for the status API
        self.stats = UnitCounters(self.arbiter.stats, source.unit)

    @abstractmethod
    def _arbiter(self, shared: Shared) -> BusArbiter:
        """The arbiter of this slave's bus among the gateway's shared resources (one per port)."""

    def counters(self) -> dict[str, int]:
        return self.stats.as_dict()

    def _frames(self) -> tuple[tuple[int, int], ...]:
        frames = []
        for r in self.plan.requests:
            data = (r.count + 7) // 8 if r.table.is_bits else 2 * r.count
            frames.append((8, 5 + data))
        return tuple(frames)

    def _make_client(self) -> RtuClient:
        return RtuClient(self.arbiter, self, self.source.unit, self.policy)

    async def connect(self) -> None:
        """Join the bus and probe the slave with the plan's first read: connected means it answered.

        :class:`DeviceUnavailable` when the port cannot be opened, the slave is demoted or does not answer
        (with a usable frame; a Modbus exception answer counts as present).
        """
        await super().connect()
        if not self.plan.requests:
            return
        client = self._client
        assert client is not None
        try:
            await self._send(client, self.plan.requests[0])
        except BadResponse as exc:
            raise DeviceUnavailable(exc.text) from exc


class ModbusRtuDriver(_RtuDriverBase):
    """One Modbus RTU slave (``unit``) on a serial port shared with the other assets that name it."""

    source: ModbusRtuSource

    @property
    def endpoint(self) -> str:
        return f"{self.source.port} unit {self.source.unit}"

    def _arbiter(self, shared: Shared) -> BusArbiter:
        s = self.source
        key = serial_resource(s.port)  # the key the config's cross checks use for this port
        settings = (s.baudrate, s.bytesize, s.parity, s.stopbits)
        bits = bits_per_char(s.bytesize, s.parity, s.stopbits)
        return arbiter_for(
            shared,
            key,
            settings,
            lambda: BusArbiter(
                s.port,
                settings,
                lambda: SerialLink(
                    s.port, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity, stopbits=s.stopbits
                ),
                t35=silent_interval(s.baudrate, bits),
                baudrate=s.baudrate,
                bits=bits,
            ),
        )


class ModbusRtuTcpDriver(_RtuDriverBase):
    """One Modbus RTU slave behind a serial-to-Ethernet converter (RTU frames tunnelled over TCP)."""

    source: ModbusRtuTcpSource

    @property
    def endpoint(self) -> str:
        return f"{self.source.host}:{self.source.port} unit {self.source.unit}"

    def _arbiter(self, shared: Shared) -> BusArbiter:
        s = self.source
        key = f"tcp:{s.host}:{s.port}"
        return arbiter_for(
            shared,
            key,
            (),
            lambda: BusArbiter(f"{s.host}:{s.port}", (), lambda: TcpLink(s.host, s.port), t35=0.0),
        )


RTU_SPEC = DriverSpec("modbus_rtu", ModbusRtuSource, ModbusTag, ModbusRtuDriver, check)
RTU_TCP_SPEC = DriverSpec("modbus_rtu_tcp", ModbusRtuTcpSource, ModbusTag, ModbusRtuTcpDriver, check)
