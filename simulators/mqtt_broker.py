"""A small embedded MQTT 3.1.1 broker (pure Python, asyncio), for the demo and tests where no Mosquitto exists.

Supported: CONNECT/CONNACK (clean sessions; a persistent-session request is served as a clean one), PUBLISH
QoS 0 and 1 both ways (PUBACK), SUBSCRIBE/SUBACK with ``+``/``#`` wildcards (granted QoS at most 1),
UNSUBSCRIBE, retained messages (an empty payload clears), last will on abnormal disconnect (also keepalive
expiry at 1.5x and client-id takeover), PINGREQ/PINGRESP, DISCONNECT. No authentication: every client is
accepted. Each client's outgoing bytes are bounded (``max_client_buffer``); a client that does not read fast
enough loses messages (counted in ``dropped``) rather than growing the broker's memory.

Run standalone: ``python -m simulators.mqtt_broker --port 1883``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import struct
from dataclasses import dataclass, field

log = logging.getLogger("simulators.mqtt_broker")

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

CONNACK_ACCEPTED, CONNACK_BAD_PROTOCOL, CONNACK_BAD_CLIENT_ID = 0, 1, 2


class ProtocolError(Exception):
    """The client broke the protocol; its connection is closed (and its will published)."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 matching of ``topic`` against a filter with ``+`` and ``#`` ($-topics need an explicit prefix)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or (f != "+" and f != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def valid_filter(topic_filter: str) -> bool:
    if not topic_filter or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte: int, body: bytes = b"") -> bytes:
    return bytes((first_byte,)) + _encode_length(len(body)) + body


def _utf8(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


class _Reader:
    """Cursor over one packet's variable header and payload."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u8(self) -> int:
        self._need(1)
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        self._need(2)
        self.pos += 2
        return struct.unpack_from("!H", self.data, self.pos - 2)[0]

    def blob(self) -> bytes:
        n = self.u16()
        self._need(n)
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def text(self) -> str:
        try:
            return self.blob().decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid UTF-8 string") from exc

    def rest(self) -> bytes:
        return self.data[self.pos :]

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")


@dataclass(slots=True)
class _Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(eq=False)
class _Client:
    client_id: str
    writer: asyncio.StreamWriter
    keepalive: int
    will: _Will | None
    subscriptions: dict[str, int] = field(default_factory=dict)
    next_mid: itertools.count = field(default_factory=lambda: itertools.count(1))
    dropped: int = 0
    closed: bool = False


class EmbeddedBroker:
    """An MQTT 3.1.1 broker on ``host:port`` (port 0: any free port, read ``.port`` after :meth:`start`).

    :meth:`stop` closes the listener and every connection (without publishing wills: the broker itself is
    going away); :meth:`start` again reopens on the same port. Retained messages survive a stop/start of the
    same object, like a broker with persistence.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_client_buffer: int = 4 << 20, max_packet: int = 64 << 20
    ) -> None:
        self.host = host
        self._port = port
        self.max_client_buffer = max_client_buffer
        self.max_packet = max_packet
        self._server: asyncio.Server | None = None
        self._clients: dict[str, _Client] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._conns: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._anon_ids = itertools.count(1)

    @property
    def port(self) -> int:
        return self._port

    @property
    def dropped(self) -> int:
        """Messages not delivered to slow clients whose buffer was full (current connections)."""
        return sum(c.dropped for c in self._clients.values())

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, self.host, self._port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("embedded MQTT broker listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True  # connections end without wills: the broker itself is going away
        server.close()
        for writer in list(self._conns):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()
        self._clients.clear()
        self._closing = False

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------- connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._conns.add(writer)
        client: _Client | None = None
        clean = False
        try:
            async with asyncio.timeout(10):
                first, body = await self._read_packet(reader)
            if first >> 4 != CONNECT:
                raise ProtocolError("first packet is not CONNECT")
            client = self._connect(body, writer)
            if client is None:
                return
            timeout = client.keepalive * 1.5 if client.keepalive else None
            while True:
                async with asyncio.timeout(timeout):
                    first, body = await self._read_packet(reader)
                if first >> 4 == DISCONNECT:
                    clean = True
                    return
                self._dispatch(client, first, body)
        except (ProtocolError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("client %s: %s", client.client_id if client else "?", exc or type(exc).__name__)
        except OSError as exc:
            log.debug("client %s: %s", client.client_id if client else "?", exc)
        finally:
            self._handlers.discard(task)
            self._conns.discard(writer)
            if client is not None:
                self._drop_client(client, publish_will=not clean and not self._closing)
            writer.close()

    async def _read_packet(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        for _ in range(4):
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        else:
            raise ProtocolError("malformed remaining length")
        if length > self.max_packet:
            raise ProtocolError(f"packet of {length} bytes exceeds the limit")
        return first, await reader.readexactly(length) if length else b""

    def _connect(self, body: bytes, writer: asyncio.StreamWriter) -> _Client | None:
        r = _Reader(body)
        name, level, flags, keepalive = r.text(), r.u8(), r.u8(), r.u16()
        if (name, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            writer.write(_packet(CONNACK << 4, bytes((0, CONNACK_BAD_PROTOCOL))))
            return None
        if flags & 0x01:
            raise ProtocolError("reserved CONNECT flag set")
        client_id = r.text()
        will = None
        if flags & 0x04:
            will_topic, will_payload = r.text(), r.blob()
            will = _Will(will_topic, will_payload, min((flags >> 3) & 0x03, 1), bool(flags & 0x20))
        if flags & 0x80:
            r.text()  # username: accepted, not checked
        if flags & 0x40:
            r.blob()  # password
        if not client_id:
            if not flags & 0x02:
                writer.write(_packet(CONNACK << 4, bytes((0, CONNACK_BAD_CLIENT_ID))))
                return None
            client_id = f"auto-{next(self._anon_ids)}"
        old = self._clients.get(client_id)
        if old is not None:  # takeover: the old connection is closed as if abnormally
            self._drop_client(old, publish_will=True)
            old.writer.close()
        client = _Client(client_id, writer, keepalive, will)
        self._clients[client_id] = client
        writer.write(_packet(CONNACK << 4, bytes((0, CONNACK_ACCEPTED))))
        return client

    def _drop_client(self, client: _Client, *, publish_will: bool) -> None:
        if client.closed:
            return
        client.closed = True
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        if publish_will and client.will is not None:
            w = client.will
            self._route(w.topic, w.payload, w.qos, w.retain)

    # ----------------------------------------------------------------------------------------- packets

    def _dispatch(self, client: _Client, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBLISH:
            self._on_publish(client, first, body)
        elif kind == PUBACK:
            pass  # clean sessions only: nothing to retransmit
        elif kind == SUBSCRIBE:
            self._on_subscribe(client, body)
        elif kind == UNSUBSCRIBE:
            r = _Reader(body)
            mid = r.u16()
            while not r.at_end():
                client.subscriptions.pop(r.text(), None)
            self._send(client, _packet(UNSUBACK << 4, struct.pack("!H", mid)), essential=True)
        elif kind == PINGREQ:
            self._send(client, _packet(PINGRESP << 4), essential=True)
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _on_publish(self, client: _Client, first: int, body: bytes) -> None:
        qos, retain = (first >> 1) & 0x03, bool(first & 0x01)
        if qos > 1:
            raise ProtocolError("QoS 2 is not supported by the embedded broker")
        r = _Reader(body)
        topic = r.text()
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolError(f"invalid topic name {topic!r}")
        mid = r.u16() if qos else 0
        self._route(topic, r.rest(), qos, retain)
        if qos:
            self._send(client, _packet(PUBACK << 4, struct.pack("!H", mid)), essential=True)

    def _on_subscribe(self, client: _Client, body: bytes) -> None:
        r = _Reader(body)
        mid = r.u16()
        granted = bytearray()
        new_filters: list[tuple[str, int]] = []
        while not r.at_end():
            topic_filter, qos = r.text(), r.u8() & 0x03
            if not valid_filter(topic_filter):
                granted.append(0x80)
                continue
            qos = min(qos, 1)
            client.subscriptions[topic_filter] = qos
            granted.append(qos)
            new_filters.append((topic_filter, qos))
        if not granted:
            raise ProtocolError("SUBSCRIBE without topic filters")
        self._send(client, _packet(SUBACK << 4, struct.pack("!H", mid) + bytes(granted)), essential=True)
        for topic, (payload, msg_qos) in list(self._retained.items()):
            for topic_filter, sub_qos in new_filters:
                if topic_matches(topic_filter, topic):
                    self._deliver(client, topic, payload, min(msg_qos, sub_qos), retain=True)
                    break

    def _route(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self._retained[topic] = (payload, qos)
            else:
                self._retained.pop(topic, None)
        for client in list(self._clients.values()):
            best = -1
            for topic_filter, sub_qos in client.subscriptions.items():
                if sub_qos > best and topic_matches(topic_filter, topic):
                    best = sub_qos
            if best >= 0:
                self._deliver(client, topic, payload, min(qos, best), retain=False)

    def _deliver(self, client: _Client, topic: str, payload: bytes, qos: int, *, retain: bool) -> None:
        header = _utf8(topic)
        if qos:
            header += struct.pack("!H", next(client.next_mid) % 65535 + 1)
        self._send(client, _packet((PUBLISH << 4) | (qos << 1) | int(retain), header + payload), essential=False)

    def _send(self, client: _Client, data: bytes, *, essential: bool) -> None:
        if client.closed or client.writer.is_closing():
            return
        if not essential and client.writer.transport.get_write_buffer_size() > self.max_client_buffer:
            client.dropped += 1
            if client.dropped == 1:
                log.warning("client %s does not keep up: dropping messages to it", client.client_id)
            return
        client.writer.write(data)


async def _main(host: str, port: int) -> None:
    async with EmbeddedBroker(host, port):
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Embedded MQTT 3.1.1 broker (for demos and tests)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
