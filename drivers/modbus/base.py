"""The transport-independent part of the Modbus drivers: plan, poll, error mapping.

A concrete driver (TCP, RTU, RTU over TCP) only says how to build its client (pymodbus's client API over
the driver's own framing, which checks every answer against its request: :mod:`drivers.modbus.check`) and
how to name its endpoint in messages. Everything else — issuing the plan's requests one
after another on the one connection, turning exception responses into bad tags and lost connections
into :class:`~gateway.driver.DeviceUnavailable` — lives here.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import numpy as np
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers.modbus.address import Table
from drivers.modbus.config import ModbusTag
from drivers.modbus.decode import apply_scaling, decode_bits, decode_poll
from drivers.modbus.plan import ReadPlan, ReadRequest, compile_plan
from gateway.batch import Batch
from gateway.driver import DeviceUnavailable, Driver, DriverContext

#: Standard Modbus exception codes (the number the device answered with is kept as the error code).
EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

#: Error code of a response that carried fewer registers or bits than requested.
SHORT_RESPONSE = 1001


class BadResponse(ModbusException):
    """One answer was unusable (e.g. an RTU frame with a CRC error) but the link stands.

    Raised by a transport for a single request; :meth:`ModbusDriverBase.read` marks only that request's
    tags bad with ``code`` and ``text`` and goes on with the rest of the poll.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class _RegistersAsArray:
    """Decode a register response into a NumPy view of its bytes instead of a list of Python ints.

    pymodbus unpacks every register with ``struct`` into a list; the driver only copies the words into its
    poll buffer, so a big-endian ``uint16`` view of the frame does the same with no per-register Python work.
    ``registers`` supports what callers use: ``len``, slicing, iteration, ``int()`` of an element.
    ``str()`` names the response without its registers: pymodbus 3.16 formats every decoded response for a
    debug log line even when debug logging is off, and printing the registers is the costly part.
    """

    #: set by pymodbus on the response (ModbusPDU), named in __str__
    dev_id: int
    transaction_id: int
    #: a NumPy uint16 view instead of ModbusPDU's list of ints
    registers: Any

    def decode(self, data: bytes) -> None:
        n = int(data[0])
        if n >= len(data):
            raise ModbusException(f"byte_count {n} > length of packet {len(data)}")
        self.registers = np.frombuffer(data, dtype=">u2", count=n // 2, offset=1)

    def __str__(self) -> str:
        return (f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id}, "
                f"{len(self.registers)} registers)")


class _HoldingRegisters(_RegistersAsArray, ReadHoldingRegistersResponse):
    pass


class _InputRegisters(_RegistersAsArray, ReadInputRegistersResponse):
    pass


def exception_text(code: int) -> str:
    """``"Modbus exception 2 (illegal data address)"`` for a Modbus exception code."""
    return f"Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown exception code')})"


def plan_of(source: Any, tags: list[ModbusTag]) -> ReadPlan:
    """The read plan of ``tags`` within the source's limits; ``ValueError`` (PlanError) when they cannot be
    read within them (e.g. a string tag longer than ``max_registers_per_read``)."""
    return compile_plan(tags, max_registers_per_read=source.max_registers_per_read,
                        max_bits_per_read=source.max_bits_per_read, max_gap=source.max_gap)  # fmt: skip


def check(source: Any, tags: list[ModbusTag]) -> None:
    """``DriverSpec.check`` of the Modbus drivers: the tags compile into a plan (see :func:`plan_of`)."""
    plan_of(source, tags)


class ModbusDriverBase(Driver):
    """Polls a compiled :class:`ReadPlan` over a pymodbus async client.

    Called only from the source's task (never concurrently), as described in :mod:`gateway.driver`.
    Subclasses implement :meth:`_make_client` and :attr:`endpoint`.
    """

    def __init__(self, source: Any, tags: list[ModbusTag], context: DriverContext) -> None:
        self.source = source
        self.tags = list(tags)
        self.plan = plan_of(source, self.tags)
        #: float32 tags are published at float32 precision (123.4, not 123.40000152587891)
        context.meta.float32 |= np.array([t.type == "float32" for t in self.tags], dtype=bool)
        self._client: Any = None
        #: the poll buffer: every register response of a poll, at ``plan.word_offset`` (reused every poll)
        self._words = np.zeros(self.plan.register_words, dtype=np.uint16)

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """Where the device is, for messages (``host:port unit 1``)."""

    @abstractmethod
    def _make_client(self) -> Any:
        """A new, unconnected client offering pymodbus's async client API (``connect``, ``close``,
        ``connected``, ``register``, ``read_holding_registers(...)`` ...), with no retries or reconnects of its
        own, that fails the request in flight at once when the connection is lost and raises
        :class:`BadResponse` for an answer that does not belong to its request."""

    @property
    def request_count(self) -> int:
        """Number of Modbus requests one poll issues."""
        return len(self.plan.requests)

    async def connect(self) -> None:
        """Open the connection; :class:`DeviceUnavailable` when the device cannot be reached."""
        await self.close()
        self._client = client = self._make_client()  # held before awaiting, so close() frees it on cancel
        client.register(_HoldingRegisters)  # registers as one NumPy view, on every transport
        client.register(_InputRegisters)
        if not await client.connect():
            await self.close()
            raise DeviceUnavailable(f"cannot connect to Modbus device at {self.endpoint} (refused, unreachable or timed out)")

    async def close(self) -> None:
        """Drop the connection. Never raises."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - close() must not raise; the connection is gone either way
                pass

    async def write(self, tag: str, value: Any) -> Any:
        """Write engineering ``value`` to ``tag``, read it back, return the read-back value.

        Encoding (type, scale, offset, byte order) is :func:`drivers.modbus.encode.encode_write`: a coil with
        FC5, one register with FC6, several with FC16; a ``bit`` of a holding register is read (FC3),
        changed and written back with FC6 — not atomic: a change the device makes to the other bits of that
        register between the read and the write is lost. The value is then read back (FC1 / FC3) and must
        equal what was written, register for register, else :class:`~gateway.driver.WriteError`.
        ``ValueError`` for a value the tag cannot hold (nothing is sent); WriteError for an exception answer;
        :class:`DeviceUnavailable` when the connection is gone or the device does not answer.
        """
        from drivers.modbus import encode  # local: write() is the one method of this class that uses it

        from gateway.driver import WriteError

        cfg = next((t for t in self.tags if t.name == tag), None)
        if cfg is None:
            raise ValueError(f"no tag {tag!r} on {self.endpoint}")
        op = encode.encode_write(cfg, value)
        client = self._client
        if client is None or not client.connected:
            raise DeviceUnavailable(f"not connected to {self.endpoint}")
        unit = self.source.unit

        async def call(what: str, request: Any) -> Any:
            try:
                response = await request
            except ModbusException as exc:
                if client.connected and "No response" not in str(exc):
                    raise WriteError(f"invalid answer from {self.endpoint} to {what} ({exc}); "
                                     "the write may or may not have been applied") from exc
                raise DeviceUnavailable(f"{self.endpoint}: no answer to {what} ({exc})") from exc
            if response.isError():
                raise WriteError(f"{exception_text(int(getattr(response, 'exception_code', 0)))} "
                                 f"from {self.endpoint} to {what}")
            return response

        if op.table is Table.COIL:
            await call(f"write {op}", client.write_coil(op.address, bool(op.bit), device_id=unit))
            rr = await call(f"read-back of co:{op.address}", client.read_coils(op.address, count=1, device_id=unit))
            bits = list(rr.bits)
            if not bits or bool(bits[0]) != op.bit:
                raise WriteError(f"{self.endpoint}: wrote {op} but read back {bits[:1]}")
            return encode.readback_value(cfg, bit=bool(bits[0]))

        async def read_words(count: int) -> tuple[int, ...]:
            rr = await call(f"read of hr:{op.address}+{count}",
                            client.read_holding_registers(op.address, count=count, device_id=unit))
            if len(rr.registers) < count:
                raise WriteError(f"{self.endpoint}: short answer reading back hr:{op.address}+{count}")
            return tuple(int(w) for w in rr.registers[:count])

        if op.bit_index is not None:
            (current,) = await read_words(1)
            word = encode.set_bit(current, op.bit_index, bool(op.bit))
            await call(f"write {op}", client.write_register(op.address, word, device_id=unit))
            (back,) = await read_words(1)
            if bool(back >> op.bit_index & 1) != op.bit:
                raise WriteError(f"{self.endpoint}: wrote {op} but the bit reads back {back >> op.bit_index & 1}")
            return encode.readback_value(cfg, bit=bool(back >> op.bit_index & 1))

        if len(op.words) == 1:
            await call(f"write {op}", client.write_register(op.address, op.words[0], device_id=unit))
        else:
            await call(f"write {op}", client.write_registers(op.address, list(op.words), device_id=unit))
        back_words = await read_words(len(op.words))
        shown = encode.readback_value(cfg, back_words)
        if back_words != op.words:
            raise WriteError(f"{self.endpoint}: wrote {value!r} to {tag!r} but read back {shown!r} "
                             f"(registers {list(back_words)} instead of {list(op.words)})")
        return shown

    async def read(self) -> Batch:
        """One poll of every tag, requests issued in plan order on the one connection.

        Each tag's ``ts`` is when the response of its request arrived. A Modbus exception answer marks
        only that request's tags bad (error code = the exception code). No answer, or a lost
        connection, raises :class:`DeviceUnavailable`. The register responses are collected into one
        buffer and decoded together after the last one (:func:`~drivers.modbus.decode.decode_poll`).
        """
        client = self._client
        if client is None:
            raise DeviceUnavailable(f"not connected to {self.endpoint}")
        plan = self.plan
        batch = Batch.empty(len(plan), 0)
        answers: list[ModbusPDU | BadResponse] = []
        for request in plan.requests:
            if not client.connected:
                raise DeviceUnavailable(f"connection to {self.endpoint} was closed")
            try:
                answers.append(await self._send(client, request))
            except BadResponse as exc:
                answers.append(exc)
            except ModbusException as exc:
                raise DeviceUnavailable(self._failure_text(client, request, exc)) from exc
            batch.ts[request.positions] = time.time_ns()
        self.decode_answers(plan, answers, batch, self._words)
        return batch

    @staticmethod
    def decode_answers(plan: ReadPlan, answers: list[Any], batch: Batch, words: np.ndarray | None = None) -> None:
        """Decode one poll's answers (a response PDU or a :class:`BadResponse` per request, in plan order).

        Register words are copied into one poll buffer (``words``, reused when given) and decoded together;
        an exception answer, a short answer or a BadResponse marks only that request's tags bad.
        Scaling is applied last.
        """
        if words is None:
            words = np.zeros(plan.register_words, dtype=np.uint16)
        failed: list[tuple[ReadRequest, int, str]] = []
        for request, offset, answer in zip(plan.requests, plan.word_offset, answers):
            if isinstance(answer, BadResponse):
                failed.append((request, answer.code, answer.text))
            elif answer.isError():
                code = int(getattr(answer, "exception_code", 0))
                failed.append((request, code, exception_text(code)))
            elif offset < 0:
                bits = np.asarray(answer.bits, dtype=bool)
                if len(bits) < request.count:
                    failed.append((request, SHORT_RESPONSE, f"short response: {len(bits)} of {request.count} bits"))
                else:
                    decode_bits(request, bits, batch)
            else:
                registers = answer.registers
                if len(registers) < request.count:  # a longer answer never gets here: the transports reject it
                    text = f"short response: {len(registers)} of {request.count} registers"
                    failed.append((request, SHORT_RESPONSE, text))
                    words[offset : offset + request.count] = 0
                else:
                    words[offset : offset + request.count] = registers[: request.count]
        if plan.register_words:
            decode_poll(plan, words, batch)
        for request, code, text in failed:
            batch.mark_bad(request.positions, code, text)
            if batch.strings:  # a failed request's string tags keep no text
                for pos in request.positions.tolist():
                    batch.strings.pop(pos, None)
        apply_scaling(plan, batch)

    def _failure_text(self, client: Any, request: ReadRequest, exc: ModbusException) -> str:
        if not client.connected:
            return f"connection to {self.endpoint} was closed while reading {request}"
        if "No response" in str(exc):  # pymodbus's wording for a request that timed out
            return f"no response from {self.endpoint} within {self.source.timeout:g}s to a read of {request}"
        return f"invalid response from {self.endpoint} to a read of {request}: {exc}"

    async def _send(self, client: Any, request: ReadRequest) -> ModbusPDU:
        unit = self.source.unit
        if request.table is Table.HOLDING_REGISTER:
            return await client.read_holding_registers(request.start, count=request.count, device_id=unit)
        if request.table is Table.INPUT_REGISTER:
            return await client.read_input_registers(request.start, count=request.count, device_id=unit)
        if request.table is Table.COIL:
            return await client.read_coils(request.start, count=request.count, device_id=unit)
        return await client.read_discrete_inputs(request.start, count=request.count, device_id=unit)
