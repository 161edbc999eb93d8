"""MQTT uplink: paho-mqtt 2.x driven from the asyncio event loop, with an ordered, bounded in-memory queue.

Threading model
    paho's network thread is not used. The client's socket is registered with the event loop through paho's
    socket callbacks (``add_reader`` -> ``loop_read``, ``add_writer`` -> ``loop_write``) and a once-a-second
    tick calls ``loop_misc`` (keepalive pings, and the close of a link whose PINGRESP or CONNACK does not come
    within the keepalive: that is how a half-open link is detected and reconnected). Every paho callback runs
    on the loop thread.

    The one blocking step in paho is ``Client.reconnect()``: DNS lookup, TCP connect (bounded by
    ``connect_timeout``) and TLS handshake. It runs in a worker thread (``asyncio.to_thread``) while nothing on
    the loop touches the client (``publish`` only queues until the broker has accepted the connection); the
    socket is attached to the loop when that call returns. We chose this over connecting a socket ourselves
    because paho has no public way to adopt an already connected socket, and its TLS/hostname handling stays
    in one place.

Delivery
    QoS 1 messages are tracked by packet id until their PUBACK. When the link drops, the unacknowledged ones go
    back to the head of the queue in their original order, so on reconnect they are sent first, then the rest
    of the queue: at-least-once, order preserved. The queue is bounded (``mqtt.max_queued``); when full the
    oldest message is dropped and counted. paho's own resend and queue are not used (we clear them). Data
    messages do not use this queue: they go through :mod:`gateway.delivery` (``try_send`` and the disk spool);
    this queue carries only the gateway's own small messages (statuses, metrics, command results).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.status import Backoff
from gateway.uplink.tls import build_ssl_context

if TYPE_CHECKING:
    from gateway.config.models import MqttSection

log = logging.getLogger("gateway.uplink")

MessageCallback = Callable[[str, bytes, bool], None]
"""``callback(topic, payload, retained)`` for :meth:`MqttUplink.subscribe`; runs on the event loop thread."""

_MISC_INTERVAL = 1.0
_CONNECT_TIMEOUT = 10.0
_MAX_PAYLOAD = 268_435_455


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid MQTT topic to publish to: {topic!r} (empty, or contains '+', '#' or NUL)")
    if len(topic.encode()) > 65535:
        raise ValueError("MQTT topic longer than 65535 bytes")


async def _wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True when ``event`` is set within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class MqttUplink:
    """One MQTT broker connection of the gateway, kept alive by :meth:`run` until :meth:`stop`.

    Usage (the engine)::

        uplink = MqttUplink(cfg.mqtt, client_id=cfg.gateway.id, status_topic=f"{ns}/_gateway/{id}/status")
        task = tg.create_task(uplink.run())
        uplink.publish(topic, payload)        # any time, also before the first connection
        ...
        await uplink.stop()                   # flush, retained "offline", clean disconnect; run() returns

    Every method must be called from the event loop thread that runs :meth:`run`. ``publish`` never blocks and
    never raises because the broker is unreachable. On every (re)connect the retained ``online`` is published to
    ``status_topic``; the broker publishes the retained last will ``offline`` there if the link dies without a
    clean disconnect. Log lines go to ``gateway.uplink``: one on an outage, one on recovery.
    """

    def __init__(
        self,
        cfg: MqttSection,
        *,
        client_id: str,
        status_topic: str,
        on_connection_change: Callable[[bool], None] | None = None,
        max_inflight: int = 64,
        flush_timeout: float = 2.0,
    ) -> None:
        _check_topic(status_topic)
        self._cfg = cfg
        self._client_id = cfg.client_id or client_id
        self._status_topic = status_topic
        self._on_connection_change = on_connection_change
        self._window = max(1, max_inflight)
        self._flush_timeout = flush_timeout
        self._where = f"{cfg.host}:{cfg.port}"

        self._pending: deque[_Message] = deque()
        self._inflight: OrderedDict[int, _Message] = OrderedDict()
        self._control: dict[int, asyncio.Future[None]] = {}
        self._subscriptions: dict[str, tuple[int, MessageCallback]] = {}
        self._tracked: set[int] = set()  # packet ids of try_send() messages awaiting their PUBACK
        self._on_ack: Callable[[int], None] | None = None
        self._on_lost: Callable[[], None] | None = None

        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._sock: Any = None
        self._fd = -1
        self._connected = False
        self._running = False
        self._stopping = False
        self._ever_connected = False
        self._accepted_this_session = False
        self._failure_noted_this_session = False
        self._outage_since: float | None = None
        self._overflow_logged = False

        self._connected_event = asyncio.Event()
        self._session_closed = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._done = asyncio.Event()

        self._published = 0
        self._acked = 0
        self._dropped = 0
        self._reconnects = 0
        self._connect_failures = 0
        self._last_error: str | None = None
        self._connected_since: float | None = None

    # ----------------------------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        """True between the broker's CONNACK and the loss (or close) of that connection."""
        return self._connected

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the broker has accepted the connection; False if ``timeout`` seconds pass first."""
        return await _wait_event(self._connected_event, timeout)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for metrics and the status API (a fresh dict; ``connected_since`` is Unix time or None)."""
        return {
            "connected": self._connected,
            "published": self._published,
            "acked": self._acked,
            "queued": len(self._pending),
            "inflight": len(self._inflight),
            "dropped": self._dropped,
            "reconnects": self._reconnects,
            "connect_failures": self._connect_failures,
            "last_error": self._last_error,
            "connected_since": self._connected_since,
        }

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        """Hand a message over for delivery; returns at once.

        Connected and the in-flight window has room: given to paho now. Otherwise queued in memory, behind
        everything queued before it. When the queue holds ``mqtt.max_queued`` messages, the oldest is dropped and
        counted in ``stats["dropped"]``. Raises ``ValueError`` only for a message that can never be sent (bad
        topic or QoS, payload over 256 MB).
        """
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos!r}")
        _check_topic(topic)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if len(data) > _MAX_PAYLOAD:
            raise ValueError(f"MQTT payload of {len(data)} bytes exceeds the protocol limit")
        msg = _Message(topic, data, qos, retain)
        if not (self._connected and not self._pending and self._send(msg)):
            self._enqueue(msg)
        self._update_idle()

    def subscribe(self, topic_filter: str, callback: MessageCallback, *, qos: int = 1) -> None:
        """Deliver messages matching ``topic_filter`` to ``callback``; (re)subscribed on every connect."""
        self._subscriptions[topic_filter] = (qos, callback)
        if self._connected and self._client is not None:
            self._client.subscribe(topic_filter, qos)

    def set_delivery(self, on_ack: Callable[[int], None], on_lost: Callable[[], None]) -> None:
        """Register the owner of :meth:`try_send` messages (the spool's delivery): ``on_ack(mid)`` when the
        broker acknowledged one, ``on_lost()`` when the link is gone and no unacknowledged one will ever be
        acknowledged (called before any reconnect, on the loop thread)."""
        self._on_ack, self._on_lost = on_ack, on_lost

    def try_send(self, topic: str, payload: bytes, *, qos: int = 1) -> int | None:
        """Give a message to the broker now, without queuing: the packet id to expect in ``on_ack`` (QoS 1),
        ``0`` for QoS 0 (nothing will acknowledge it), or ``None`` when not connected (the caller keeps it)."""
        if not self._connected or self._client is None:
            return None
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        self._published += 1
        if not qos:
            return 0
        self._tracked.add(info.mid)
        return info.mid

    def drop_connection(self, reason: str) -> None:
        """Close the current connection at once (no DISCONNECT) and reconnect with backoff, e.g. when PUBACKs
        stop coming although the socket looks alive (a half-open link)."""
        if self._sock is not None and not self._stopping:
            sock = self._sock
            self._detach()
            sock.close()
            self._link_down(reason)

    async def run(self) -> None:
        """Connect, and reconnect with capped exponential backoff, until :meth:`stop`.

        A broker that is down or refuses us is not an error: it is logged once per outage and retried. Raises
        :class:`~gateway.uplink.tls.UplinkConfigError` only when the TLS files cannot be loaded. Cancelling the
        task closes the socket without a DISCONNECT, so the broker publishes the last will.
        """
        if self._running:
            raise RuntimeError("MqttUplink.run() is already running")
        self._running = True
        self._done.clear()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            ssl_ctx = await asyncio.to_thread(build_ssl_context, self._cfg.tls) if self._cfg.tls else None
            self._client = self._make_client(ssl_ctx)
            backoff = Backoff(self._cfg.reconnect_max)
            while not self._stop_requested.is_set():
                if await self._session():
                    backoff.reset()
                if self._stop_requested.is_set():
                    break
                await _wait_event(self._stop_requested, backoff.next())
        finally:
            self._stopping = True
            self._abort_session()
            self._running = False
            self._done.set()

    async def stop(self) -> None:
        """Flush and disconnect cleanly; :meth:`run` returns.

        Waits up to ``flush_timeout`` (2 s) for queued and in-flight QoS 1 messages to be acknowledged, publishes
        the retained ``offline`` status, sends DISCONNECT (so the broker does not fire the will) and closes.
        Messages still undelivered are counted as dropped and logged.
        """
        self._stopping = True
        self._stop_requested.set()
        if self._connected and self._client is not None:
            deadline = time.monotonic() + self._flush_timeout
            await _wait_event(self._idle, self._flush_timeout)
            if self._connected:
                info = self._client.publish(self._status_topic, b"offline", qos=1, retain=True)
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    acked = self._loop_or_running().create_future()
                    self._control[info.mid] = acked
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.2, deadline - time.monotonic())):
                            await acked
            if self._connected:
                self._client.disconnect()
                await _wait_event(self._session_closed, 1.0)
        self._abort_session()
        if self._running:
            await _wait_event(self._done, 2.0)
        lost = len(self._pending) + len(self._inflight)
        if lost:
            self._dropped += lost
            log.warning("MQTT uplink stopped with %d message(s) not acknowledged by %s", lost, self._where)
            self._pending.clear()
            self._inflight.clear()

    # ------------------------------------------------------------------------------------ connection life

    def _make_client(self, ssl_ctx: ssl.SSLContext | None) -> paho.Client:
        cfg = self._cfg
        # reconnect_on_failure=False: paho must never call the blocking reconnect() itself (on the loop).
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(0)  # our own window; paho sends at once
        client.connect_timeout = _CONNECT_TIMEOUT
        if cfg.username:
            password = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, password)
        client.will_set(self._status_topic, b"offline", qos=1, retain=True)
        if ssl_ctx is not None:
            client.tls_set_context(ssl_ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.connect_async(cfg.host, cfg.port, keepalive=max(1, round(cfg.keepalive)))
        return client

    async def _session(self) -> bool:
        """One connection, from the TCP connect to the socket's close. True if the broker accepted us."""
        assert self._client is not None and self._loop is not None
        client, loop = self._client, self._loop
        self._session_closed.clear()
        self._accepted_this_session = False
        self._failure_noted_this_session = False
        connecting = asyncio.ensure_future(asyncio.to_thread(client.reconnect))
        stop_wait = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({connecting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            connecting.add_done_callback(self._discard_connect)
            raise
        finally:
            stop_wait.cancel()
        if not connecting.done():
            connecting.add_done_callback(self._discard_connect)
            return False
        exc = connecting.exception()
        if exc is not None:
            if not isinstance(exc, OSError):
                raise exc
            self._note_failure(f"cannot connect to {self._where}: {exc}")
            return False
        sock = client.socket()
        if sock is None:
            self._note_failure(f"cannot connect to {self._where}: no socket")
            return False
        self._sock, self._fd = sock, sock.fileno()
        loop.add_reader(self._fd, self._on_readable)
        loop.add_writer(self._fd, self._on_writable)  # the CONNECT packet is waiting in paho
        while not await _wait_event(self._session_closed, _MISC_INTERVAL):
            client.loop_misc()
        return self._accepted_this_session

    def _discard_connect(self, fut: asyncio.Future[Any]) -> None:
        """A connect finished after nobody wanted it any more: close its socket."""
        if not fut.cancelled() and fut.exception() is None and self._client is not None:
            sock = self._client.socket()
            if sock is not None and sock is not self._sock:
                sock.close()

    def _abort_session(self) -> None:
        """Close the socket now, without DISCONNECT (the broker will publish the last will)."""
        sock = self._sock
        if sock is None:
            return
        self._detach()
        sock.close()
        self._link_down("connection closed by the gateway")

    def _detach(self) -> None:
        if self._sock is None or self._loop is None:
            return
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock, self._fd = None, -1
        self._session_closed.set()

    def _link_down(self, reason: str) -> None:
        """The connection is over: requeue unacknowledged messages at the head, in order; log once."""
        self._session_closed.set()
        if self._client is not None:
            self._client.drop_out_messages()
        for fut in self._control.values():
            if not fut.done():
                fut.set_result(None)  # nobody waits for an ack that can no longer come
        self._control.clear()
        if self._tracked:
            self._tracked.clear()
            if self._on_lost is not None:
                self._on_lost()
        if self._inflight:
            self._pending.extendleft(reversed(self._inflight.values()))
            self._inflight.clear()
            self._trim_queue()
        if not self._connected:
            return
        self._connected = False
        self._connected_event.clear()
        self._connected_since = None
        if not self._stopping:
            self._last_error = f"connection to {self._where} lost: {reason}"
            self._outage_since = time.monotonic()
            log.warning("MQTT %s; %d message(s) queued, reconnecting", self._last_error, len(self._pending))
        self._notify(False)

    def _note_failure(self, error: str) -> None:
        self._connect_failures += 1
        self._last_error = error
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "MQTT %s; retrying with backoff up to %gs (logged once per outage)", error, self._cfg.reconnect_max
            )
        else:
            log.debug("MQTT %s", error)

    def _notify(self, connected: bool) -> None:
        if self._on_connection_change is not None and self._loop is not None:
            self._loop.call_soon(self._call_connection_change, connected)

    def _call_connection_change(self, connected: bool) -> None:
        try:
            self._on_connection_change(connected)  # type: ignore[misc]
        except Exception:
            log.exception("on_connection_change callback failed")

    def _loop_or_running(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    # -------------------------------------------------------------------------------------------- sending

    def _send(self, msg: _Message) -> bool:
        """Give ``msg`` to paho if the window allows; False if it must wait in the queue."""
        if msg.qos and len(self._inflight) >= self._window:
            return False
        assert self._client is not None
        info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self._published += 1
        if msg.qos:
            self._inflight[info.mid] = msg
        return True

    def _pump(self) -> None:
        while self._pending and self._connected and self._send(self._pending[0]):
            self._pending.popleft()

    def _enqueue(self, msg: _Message) -> None:
        self._pending.append(msg)
        self._trim_queue()

    def _trim_queue(self) -> None:
        excess = len(self._pending) - self._cfg.max_queued
        if excess <= 0:
            return
        for _ in range(excess):
            self._pending.popleft()
        self._dropped += excess
        if not self._overflow_logged:
            self._overflow_logged = True
            log.warning(
                "MQTT queue full (%d messages, mqtt.max_queued): dropping the oldest; see stats 'dropped'",
                self._cfg.max_queued,
            )

    def _update_idle(self) -> None:
        if self._pending or self._inflight:
            self._idle.clear()
        else:
            self._idle.set()

    # ----------------------------------------------------------- paho callbacks (all on the loop thread)

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_readable(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_read()
        # TLS may hold decrypted records the kernel no longer reports as readable.
        while isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            client.loop_read()

    def _on_writable(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._on_loop_thread() and sock is self._sock:
            self._detach()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._on_loop_thread() and sock is self._sock and self._loop is not None:
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._on_loop_thread() and sock is self._sock and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._failure_noted_this_session = True
            self._note_failure(f"broker {self._where} refused the connection: {reason}")
            return  # paho closes the socket
        client.drop_out_messages()
        self._connected = True
        self._accepted_this_session = True
        self._connected_since = time.time()
        self._overflow_logged = False
        if self._ever_connected:
            self._reconnects += 1
        self._ever_connected = True
        if self._outage_since is not None:
            log.info(
                "MQTT broker %s reachable again after %.1f s; sending %d queued message(s)",
                self._where, time.monotonic() - self._outage_since, len(self._pending),
            )
            self._outage_since = None
        else:
            log.info("MQTT connected to %s as %r", self._where, self._client_id)
        client.publish(self._status_topic, b"online", qos=1, retain=True)
        for topic_filter, (qos, _) in self._subscriptions.items():
            client.subscribe(topic_filter, qos)
        self._pump()
        self._update_idle()
        self._connected_event.set()
        self._notify(True)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        text = str(reason)
        if text == "Unspecified error":  # what paho reports for a plain EOF or reset
            text = "closed or reset by the peer"
        if not self._connected and not self._stopping and not self._failure_noted_this_session:
            self._failure_noted_this_session = True
            self._note_failure(f"connection to {self._where} closed before the broker accepted it: {text}")
        self._link_down(text)
        self._update_idle()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid in self._tracked:
            self._tracked.discard(mid)
            self._acked += 1
            if self._on_ack is not None:
                self._on_ack(mid)
        elif self._inflight.pop(mid, None) is not None:
            self._acked += 1
        fut = self._control.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._pump()
        self._update_idle()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        for topic_filter, (_, callback) in list(self._subscriptions.items()):
            if paho.topic_matches_sub(topic_filter, message.topic):
                try:
                    callback(message.topic, message.payload, bool(message.retain))
                except Exception:
                    log.exception("MQTT message callback for %r failed", topic_filter)
