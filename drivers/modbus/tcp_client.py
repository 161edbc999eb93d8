"""A Modbus TCP client that only takes an answer that belongs to its request.

pymodbus's TCP client takes any frame with transaction id 0, or of another unit when the request's unit
is 0, and decodes whatever function code and count the frame carries. This client keeps pymodbus's PDU
layer (request encoding, response decoding, the ``read_holding_registers(...)`` API of
:class:`~pymodbus.client.mixin.ModbusClientMixin`) and does the MBAP framing and the matching itself:

- every request gets a new transaction id, 1..65535 (never 0); :meth:`MbapClient.execute` has one request
  in flight, :meth:`MbapClient.execute_many` sends several back to back in one write (Modbus TCP allows a
  client several transactions on one connection; the driver's ``max_in_flight`` says how many) and matches
  each answer to its request by transaction id, in whatever order they come;
- a frame whose transaction id is neither 0 nor one of a pending request's is a **stale answer** (typically
  the late answer to a request that timed out): it is dropped and counted, and the client goes on waiting
  for the real answers until the timeout;
- a frame with a pending request's transaction id but another unit id, or a PDU that fails
  :func:`~drivers.modbus.check.answer_mismatch`, fails that request with
  :class:`~drivers.modbus.base.BadResponse` (code ``MISMATCHED_ANSWER``): its tags go bad, the poll goes on;
  transaction id 0 fails the oldest pending request the same way;
- an MBAP header that cannot be one (protocol id not 0, length out of range) means the byte stream is out of
  step: the connection is closed, the request fails as a lost connection and the engine reconnects.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, fields

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.decoders import DecodePDU

from drivers.modbus.base import BadResponse
from drivers.modbus.check import MISMATCHED_ANSWER, answer_mismatch

_MBAP = struct.Struct(">HHHB")
#: longest MBAP length field: unit id + a PDU of at most 253 bytes
_MAX_LENGTH = 254


@dataclass(slots=True)
class TcpCounters:
    """What one Modbus TCP driver's connection saw, for the status API (``driver_counters``)."""

    requests: int = 0
    answers: int = 0
    timeouts: int = 0
    mismatched_answers: int = 0
    stale_answers: int = 0
    desynchronised: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MbapClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class MbapClient(ModbusClientMixin):
    """Modbus TCP client of one device: ``connect()``, ``close()``, ``connected`` and the request methods.

    ``timeout`` bounds the connect and each request (or each :meth:`execute_many` window). ``name`` names the
    device in exception texts. Calls come from one task at a time (the source's); a second concurrent call
    waits for the first.
    """

    def __init__(self, host: str, port: int, *, timeout: float, counters: TcpCounters, name: str) -> None:
        super().__init__()
        self.host, self.port, self.timeout, self.name = host, port, timeout, name
        self.counters = counters
        self._decoder = DecodePDU(is_server=False)
        self._transport: asyncio.Transport | None = None
        self._rx = bytearray()
        self._tid = 0
        #: transaction id -> (unit, request PDU, future of the answer PDU), oldest first
        self._pending: dict[int, tuple[int, bytes, asyncio.Future[bytes]]] = {}
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def register(self, custom_response_class: type[ModbusPDU]) -> None:
        """Decode responses of this function code with ``custom_response_class`` (as pymodbus's clients do)."""
        self._decoder.register(custom_response_class)

    async def connect(self) -> bool:
        """Open the TCP connection; ``False`` when refused, unreachable or not done within ``timeout``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
        except (OSError, TimeoutError):
            return False
        self._transport = transport
        self._rx.clear()
        return True

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail(ConnectionException(f"connection to {self.name} was closed"))

    # -- requests -------------------------------------------------------------------------------------
    async def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        """Send ``request`` and return its decoded answer (see the module docstring for what is accepted)."""
        if no_response_expected:
            raise NotImplementedError("requests without a response are not supported over Modbus TCP")
        (answer,) = await self.execute_many([request])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def execute_many(self, requests: list[ModbusPDU]) -> list[ModbusPDU | BadResponse]:
        """Send every request in one write and return their answers in the same order.

        All of them must be answered within ``timeout`` (else ``ModbusIOException`` "No response", as for one
        request); an answer that does not belong to its request is a :class:`BadResponse` in its place; a lost
        connection raises ``ConnectionException``. The device must accept ``len(requests)`` transactions in
        flight on one connection (the driver's ``max_in_flight``).
        """
        async with self._lock:
            transport = self._transport
            if transport is None or transport.is_closing():
                raise ConnectionException(f"not connected to {self.name}")
            loop = asyncio.get_running_loop()
            pending = self._pending
            frames: list[bytes] = []
            futures: list[asyncio.Future[bytes]] = []
            for request in requests:
                pdu = bytes((request.function_code,)) + request.encode()
                unit = int(request.dev_id)
                self._tid = tid = self._tid % 0xFFFF + 1
                future: asyncio.Future[bytes] = loop.create_future()
                pending[tid] = (unit, pdu, future)
                futures.append(future)
                frames.append(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
            self.counters.requests += len(frames)
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
            answers: list[bytes | BadResponse] = []
            try:
                async with asyncio.timeout(self.timeout):
                    for future in futures:
                        try:
                            answers.append(await future)
                        except BadResponse as exc:
                            answers.append(exc)
            except TimeoutError:
                self.counters.timeouts += 1
                raise ModbusIOException(f"No response from {self.name} within {self.timeout:g}s") from None
            finally:
                pending.clear()
                for future in futures:  # the ones not awaited after a failure: retrieved, so asyncio does not log them
                    if future.done():
                        future.cancelled() or future.exception()
                    else:
                        future.cancel()
        return [a if isinstance(a, BadResponse) else self._decode(a) for a in answers]

    def _decode(self, answer: bytes) -> ModbusPDU | BadResponse:
        try:
            response = self._decoder.decode(answer)
        except (ModbusException, ValueError, IndexError, struct.error):
            response = None
        if response is None:
            self.counters.mismatched_answers += 1
            return BadResponse(MISMATCHED_ANSWER, f"answer of {self.name} cannot be decoded")
        self.counters.answers += 1
        return response

    # -- protocol callbacks ---------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        rx = self._rx
        rx += data
        while len(rx) >= _MBAP.size:
            tid, protocol, length, unit = _MBAP.unpack_from(rx)
            if protocol != 0 or not 2 <= length <= _MAX_LENGTH:
                self.counters.desynchronised += 1
                rx.clear()
                if self._transport is not None:
                    self._transport.close()  # connection_lost fails the pending request
                return
            end = _MBAP.size - 1 + length
            if len(rx) < end:
                return
            answer = bytes(rx[_MBAP.size : end])
            del rx[:end]
            self._match(tid, unit, answer)

    def _match(self, tid: int, unit: int, answer: bytes) -> None:
        pending = self._pending
        if tid == 0:  # a foreign or broken answer: it fails the request the device is answering now
            tid = next((t for t, p in pending.items() if not p[2].done()), -1)
            why: str | None = f"transaction id 0 in the answer to transaction {tid}"
        else:
            why = None
        entry = pending.get(tid)
        if entry is None or entry[2].done():
            self.counters.stale_answers += 1
            return
        want_unit, request, future = entry
        if why is None:
            if unit != want_unit:
                why = f"unit {unit} answered a request to unit {want_unit}"
            else:
                why = answer_mismatch(request, answer)
        if why is None:
            future.set_result(answer)
            return
        self.counters.mismatched_answers += 1
        text = f"answer from {self.name} does not match its request: {why}"
        future.set_exception(BadResponse(MISMATCHED_ANSWER, text))

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionException(f"connection to {self.name} was closed" + (f": {exc}" if exc else "")))

    def _fail(self, exc: Exception) -> None:
        for _, _, future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
