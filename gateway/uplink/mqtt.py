"""MQTT uplink: one broker reached over an ordered list of links, one connection at a time; paho-mqtt 2.x
driven from the asyncio event loop.

Supervisor
    :meth:`MqttUplink.run` connects over the first link, and when a link fails (connect refused or timed
    out, keepalive lost on a half-open link, no PUBACK within ``spool.ack_timeout``: the delivery calls
    :meth:`drop_connection`) it goes on to the next one at once; after a whole round of failures it waits a
    jittered backoff (at most ``reconnect_max``, default 5 s). While a link other than the first is active,
    the better links are probed with a real MQTT connect (client id ``<id>-probe``); once one of them has
    answered every probe for ``failback_after`` seconds, the uplink lets the in-flight messages be
    acknowledged (up to 2 s), disconnects cleanly and connects over it. Each link has its own keepalive,
    TLS, credentials, source address / interface, profile and byte budget (:mod:`gateway.uplink.links`).
    The host name is resolved at every connect (cellular routers change addresses).

Threading model
    paho's network thread is not used. The client's socket is registered with the event loop through paho's
    socket callbacks (``add_reader`` -> ``loop_read``, ``add_writer`` -> ``loop_write``) and a once-a-second
    tick calls ``loop_misc`` (keepalive pings, and the close of a link whose PINGRESP or CONNACK does not come
    within the keepalive). Every paho callback runs on the loop thread. The one blocking step in paho,
    ``Client.reconnect()`` (DNS, TCP connect bounded by the connect timeout, TLS handshake), runs in a worker
    thread while nothing on the loop touches that client. Failback probes run in worker threads too.

What it carries, and no queue of its own
    Data messages belong to the delivery (:mod:`gateway.delivery`): it hands them over with :meth:`try_send`
    only while :attr:`accepts_data`, and is told of PUBACKs and of a lost link through the callbacks of
    :meth:`set_delivery`; everything unacknowledged is then the delivery's to spool and replay. The uplink's
    own messages are state, not a queue: a retained message (gateway and asset statuses, metrics, ``last``)
    is remembered per topic, the newest wins, and all of them are published again on every connect; a
    non-retained one (a command result) is sent when connected and otherwise dropped and counted.

Byte budget
    When the active link's daily budget is spent, :attr:`accepts_data` turns false (the delivery spools,
    counted per link as ``budget_spooled``) while statuses still go out; it turns true again at local
    midnight or when the uplink moves to another link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.status import Backoff
from gateway.uplink.links import Link, resolve_links, save_file
from gateway.uplink.tls import build_ssl_context

if TYPE_CHECKING:
    from gateway.config.models import MqttSection

log = logging.getLogger("gateway.uplink")

MessageCallback = Callable[[str, bytes, bool], None]
"""``callback(topic, payload, retained)`` for :meth:`MqttUplink.subscribe`; runs on the event loop thread."""

_MISC_INTERVAL = 1.0
_CONNECT_TIMEOUT = 10.0
_MAX_PAYLOAD = 268_435_455
_BUDGET_SAVE_INTERVAL = 10.0


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


class _Client(paho.Client):
    """paho's client, with a source interface (SO_BINDTODEVICE) for the connection when the link asks."""

    bind_interface: str | None = None

    def _create_socket_connection(self) -> socket.socket:  # paho 2.x's one place that opens the TCP socket
        if not self.bind_interface:
            return super()._create_socket_connection()
        host, port = self._host, self._port
        last: OSError | None = None
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.bind_interface.encode())
                if self._bind_address:
                    sock.bind((self._bind_address, self._bind_port))
                sock.settimeout(self._connect_timeout)
                sock.connect(addr)
                return sock
            except OSError as exc:
                sock.close()
                last = OSError(exc.errno, f"via interface {self.bind_interface}: {exc.strerror or exc}")
        raise last or OSError(f"cannot resolve {host}")


def _make_paho(link: Link, client_id: str, ssl_ctx: ssl.SSLContext | None, *, will: tuple[str, bytes] | None,
               keepalive: float, connect_timeout: float = _CONNECT_TIMEOUT) -> _Client:
    # reconnect_on_failure=False: paho must never call the blocking reconnect() itself (on the loop).
    client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                     protocol=paho.MQTTv311, reconnect_on_failure=False)
    client.bind_interface = link.bind_interface
    client.max_inflight_messages_set(0)  # the delivery keeps its own window; paho sends at once
    client.connect_timeout = connect_timeout
    if link.username:
        client.username_pw_set(link.username, link.password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    if ssl_ctx is not None:
        client.tls_set_context(ssl_ctx)
    client.connect_async(link.host, link.port, keepalive=max(1, round(keepalive)),
                         bind_address=link.bind_address or "")
    return client


def _probe(link: Link, client_id: str, ssl_ctx: ssl.SSLContext | None, timeout: float) -> str | None:
    """A real MQTT connect over ``link`` and a clean disconnect (worker thread): None if the broker accepted
    it, else why not."""
    client = _make_paho(link, client_id, ssl_ctx, will=None, keepalive=max(5.0, timeout), connect_timeout=timeout)
    result: list[str | None] = []

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        result.append(None if not reason.is_failure else f"refused: {reason}")

    client.on_connect = on_connect
    try:
        client.reconnect()
        deadline = time.monotonic() + timeout
        while not result and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        if result and result[0] is None:
            client.disconnect()
            client.loop(timeout=0.1)
        return result[0] if result else "no CONNACK"
    except Exception as exc:  # a probe never takes the uplink down, whatever paho raises
        return str(exc) or type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            sock = client.socket()
            if sock is not None:
                sock.close()


class MqttUplink:
    """One uplink (one broker, its links), kept alive by :meth:`run` until :meth:`stop`.

    Usage (the engine)::

        uplink = MqttUplink(cfg, client_id=cfg.gateway.id, status_topic=f"{ns}/_gateway/{id}/status")
        task = tg.create_task(uplink.run())
        uplink.publish(topic, payload, retain=True)   # any time, also before the first connection
        ...
        await uplink.stop()                   # flush, retained "offline", clean disconnect; run() returns

    Every method must be called from the event loop thread that runs :meth:`run`. ``publish`` never blocks and
    never raises because the broker is unreachable. On every (re)connect the retained ``online`` is published to
    ``status_topic``; the broker publishes the retained last will ``offline`` there if the link dies without a
    clean disconnect. Log lines go to ``gateway.uplink``: one on an outage, one on recovery, one per switch.
    """

    def __init__(
        self,
        cfg: MqttSection,
        *,
        client_id: str,
        status_topic: str | None,
        on_connection_change: Callable[[bool], None] | None = None,
        on_link_change: Callable[[Link], None] | None = None,
        state_dir: Path | None = None,
        flush_timeout: float = 2.0,
        will: Callable[[], tuple[str, bytes]] | None = None,
        goodbye: Callable[[], tuple[str, bytes]] | None = None,
    ) -> None:
        if status_topic is not None:
            _check_topic(status_topic)
        self._cfg = cfg
        self.name = cfg.name
        self._client_id = cfg.client_id or client_id
        self._status_topic = status_topic
        self._on_connection_change = on_connection_change
        self._on_link_change = on_link_change
        self._flush_timeout = flush_timeout
        self.links = resolve_links(cfg, state_dir)
        self._active = 0  # index of the link in use (or being tried)
        self._ssl: dict[str, ssl.SSLContext | None] = {}
        self._clients: dict[str, _Client] = {}

        #: a session protocol's last will (Sparkplug NDEATH), asked for before every connect (in the connecting
        #: thread: it may write a file), and its goodbye published before a planned disconnect; without it the
        #: will is the retained ``offline`` on ``status_topic``
        self._will = will
        self._goodbye = goodbye
        #: data held back although connected (a Sparkplug node waiting for its primary host): see ``hold``
        self._hold = False
        self._retained: dict[str, tuple[bytes, int]] = {status_topic: (b"online", 1)} if status_topic else {}
        self._control: dict[int, asyncio.Future[None]] = {}
        self._untracked: set[int] = set()  # packet ids of our own QoS 1 messages awaiting PUBACK
        self._subscriptions: dict[str, tuple[int, MessageCallback]] = {}
        self._tracked: set[int] = set()  # packet ids of try_send() messages awaiting their PUBACK
        self._on_ack: Callable[[int], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self._on_data_gate: Callable[[bool], None] | None = None

        self._client: _Client | None = None
        self._link: Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._sock: Any = None
        self._fd = -1
        self._connected = False
        self._running = False
        self._stopping = False
        self._draining = False
        self._switch_to: int | None = None
        self._failback_task: asyncio.Future[None] | None = None
        self._ever_connected = False
        self._settled = False
        self._accepted_this_session = False
        self._failure_noted_this_session = False
        self._outage_since: float | None = None

        self._connected_event = asyncio.Event()
        self._session_closed = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()

        self._published = 0
        self._acked = 0
        self._dropped = 0
        self._reconnects = 0
        self._switches = 0
        self._connect_failures = 0
        self._last_error: str | None = None
        self._connected_since: float | None = None

    # ----------------------------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        """True between the broker's CONNACK and the loss (or close) of that connection."""
        return self._connected

    @property
    def settled(self) -> bool:
        """True once the first connect attempt has had an outcome (until then data may wait in RAM)."""
        return self._settled

    @property
    def accepts_data(self) -> bool:
        """Connected, not switching links, and the active link's byte budget not spent."""
        link = self._link
        return (self._connected and not self._draining and not self._hold
                and not (link is not None and link.exhausted))

    @property
    def hold(self) -> bool:
        """True while data is held back although connected (it goes to the spool, replayed once released)."""
        return self._hold

    @hold.setter
    def hold(self, value: bool) -> None:
        if value != self._hold:
            self._hold = value
            if self._connected:
                self._gate(not value)

    @property
    def active_link(self) -> Link:
        """The link in use, or the one being tried."""
        return self.links[self._active]

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the broker has accepted the connection; False if ``timeout`` seconds pass first."""
        return await _wait_event(self._connected_event, timeout)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for metrics and the status API (a fresh dict; ``connected_since`` is Unix time or None)."""
        return {
            "connected": self._connected,
            "active_link": self.active_link.name if self._connected else None,
            "published": self._published,
            "acked": self._acked,
            "inflight": len(self._tracked) + len(self._untracked),
            "dropped": self._dropped,
            "reconnects": self._reconnects,
            "link_switches": self._switches,
            "connect_failures": self._connect_failures,
            "last_error": self._last_error,
            "connected_since": self._connected_since,
            "links": {link.name: link.stats(i == self._active and self._connected) for i, link in enumerate(self.links)},
        }

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        """One of the gateway's own messages; returns at once.

        Retained: remembered as the topic's state (the newest wins) and published now if connected, and again
        after every reconnect. Not retained: published now if connected, else dropped and counted in
        ``stats["dropped"]``. Raises ``ValueError`` only for a message that can never be sent (bad topic or
        QoS, payload over 256 MB).
        """
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos!r}")
        _check_topic(topic)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if len(data) > _MAX_PAYLOAD:
            raise ValueError(f"MQTT payload of {len(data)} bytes exceeds the protocol limit")
        if retain:
            self._retained[topic] = (data, qos)
        if self._connected:
            self._publish_now(topic, data, qos, retain)
        elif not retain:
            self._dropped += 1

    def subscribe(self, topic_filter: str, callback: MessageCallback, *, qos: int = 1) -> None:
        """Deliver messages matching ``topic_filter`` to ``callback``; (re)subscribed on every connect."""
        self._subscriptions[topic_filter] = (qos, callback)
        if self._connected and self._client is not None:
            self._client.subscribe(topic_filter, qos)

    def set_delivery(self, on_ack: Callable[[int], None], on_lost: Callable[[], None],
                     on_data_gate: Callable[[bool], None] | None = None) -> None:
        """Register the owner of :meth:`try_send` messages (the delivery): ``on_ack(mid)`` when the broker
        acknowledged one; ``on_lost()`` when the link is gone and no unacknowledged one will ever be
        acknowledged (called before any reconnect, on the loop thread; also when the first connect attempt
        fails); ``on_data_gate(open)`` when :attr:`accepts_data` changes while connected (budget)."""
        self._on_ack, self._on_lost, self._on_data_gate = on_ack, on_lost, on_data_gate

    def try_send(self, topic: str, payload: bytes, *, qos: int = 1) -> int | None:
        """Give a data message to the broker now, without queuing: the packet id to expect in ``on_ack`` (QoS 1),
        ``0`` for QoS 0 (nothing will acknowledge it), or ``None`` when not :attr:`accepts_data` (the caller
        keeps it)."""
        if not self.accepts_data or self._client is None:
            return None
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        self._published += 1
        link = self._link
        assert link is not None
        link.count(topic, len(payload), qos)
        if link.exhausted:
            self._gate(False)
        if not qos:
            return 0
        self._tracked.add(info.mid)
        return info.mid

    def drop_connection(self, reason: str) -> None:
        """Close the current connection at once (no DISCONNECT) and go on to the next link, e.g. when PUBACKs
        stop coming although the socket looks alive (a half-open link)."""
        if self._sock is not None and not self._stopping:
            sock = self._sock
            self._detach()
            sock.close()
            self._link_down(reason)

    async def run(self) -> None:
        """Connect, fail over and back, reconnect with jittered backoff, until :meth:`stop`.

        A broker that is down or refuses us is not an error: it is logged once per outage and retried. Raises
        :class:`~gateway.uplink.tls.UplinkConfigError` only when TLS files cannot be loaded. Cancelling the
        task closes the socket without a DISCONNECT, so the broker publishes the last will.
        """
        if self._running:
            raise RuntimeError("MqttUplink.run() is already running")
        self._running = True
        self._done.clear()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            for link in self.links:
                self._ssl[link.name] = await asyncio.to_thread(build_ssl_context, link.tls) if link.tls else None
            backoff = Backoff(self._cfg.reconnect_max, initial=min(0.5, self._cfg.reconnect_max))
            failures = 0
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._probe_forever(), name=f"uplink-{self.name}-probe")
                tg.create_task(self._save_budget_forever(), name=f"uplink-{self.name}-budget")
                while not self._stop_requested.is_set():
                    accepted = await self._session(self.links[self._active])
                    if self._stop_requested.is_set():
                        break
                    if self._switch_to is not None:  # failback: straight to the better link
                        self._active, self._switch_to = self._switch_to, None
                        failures = 0
                        continue
                    if accepted:
                        backoff.reset()
                        failures = 0
                    else:
                        failures += 1
                    n = len(self.links)
                    if n == 1 or failures >= n:  # a whole round failed: wait, then from the best link again
                        failures = 0
                        self._active = 0
                        await _wait_event(self._stop_requested, backoff.next())
                    else:
                        self._active = (self._active + 1) % n
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self._stopping = True
            self._abort_session()
            self._running = False
            self._done.set()

    async def stop(self) -> None:
        """Flush and disconnect cleanly; :meth:`run` returns.

        Waits up to ``flush_timeout`` (2 s) for in-flight messages to be acknowledged, publishes the retained
        ``offline`` status, sends DISCONNECT (so the broker does not fire the will) and closes.
        """
        self._stopping = True
        self._stop_requested.set()
        if self._connected and self._client is not None:
            deadline = time.monotonic() + self._flush_timeout
            await self._wait_acked(self._flush_timeout)
            last = self._last_words()
            if self._connected and last is not None:
                topic, payload, retain = last
                info = self._client.publish(topic, payload, qos=1, retain=retain)
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._count(topic, len(payload), 1)
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
        await self._save_budgets()

    def _last_words(self) -> tuple[str, bytes, bool] | None:
        """What is said before a planned disconnect: the retained ``offline``, or the protocol's goodbye."""
        if self._status_topic is not None:
            return self._status_topic, b"offline", True
        if self._goodbye is not None:
            topic, payload = self._goodbye()
            return topic, payload, False
        return None

    def _connect(self, client: _Client) -> None:
        """The blocking connect (worker thread): the protocol's will for this session first, if it has one."""
        if self._will is not None:
            topic, payload = self._will()
            client.will_set(topic, payload, qos=1, retain=False)
        client.reconnect()

    # ------------------------------------------------------------------------------------ connection life

    def _client_for(self, link: Link) -> _Client:
        client = self._clients.get(link.name)
        if client is None:
            will = (self._status_topic, b"offline") if self._status_topic is not None and self._will is None else None
            client = _make_paho(link, self._client_id, self._ssl.get(link.name), will=will,
                                keepalive=link.keepalive)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            client.on_message = self._on_message
            client.on_socket_close = self._on_socket_close
            client.on_socket_register_write = self._on_socket_register_write
            client.on_socket_unregister_write = self._on_socket_unregister_write
            self._clients[link.name] = client
        return client

    async def _session(self, link: Link) -> bool:
        """One connection over ``link``, from the TCP connect to the socket's close. True if accepted."""
        assert self._loop is not None
        loop = self._loop
        client = self._client_for(link)
        self._client, self._link = client, link
        self._session_closed.clear()
        self._accepted_this_session = False
        self._failure_noted_this_session = False
        self._draining = False
        connecting = asyncio.ensure_future(asyncio.to_thread(self._connect, client))
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
            if not isinstance(exc, (OSError, ssl.SSLError)):
                raise exc
            self._note_failure(link, f"cannot connect to {link.where} (link {link.name}): {exc}")
            return False
        sock = client.socket()
        if sock is None:
            self._note_failure(link, f"cannot connect to {link.where} (link {link.name}): no socket")
            return False
        self._sock, self._fd = sock, sock.fileno()
        loop.add_reader(self._fd, self._on_readable)
        loop.add_writer(self._fd, self._on_writable)  # the CONNECT packet is waiting in paho
        while not await _wait_event(self._session_closed, _MISC_INTERVAL):
            client.loop_misc()
            if link.roll_day() and self._connected:
                self._gate(True)
            if self._switch_to is not None and not self._draining and self._connected:
                self._draining = True  # no new data on this link; what is in flight may still be acknowledged
                self._failback_task = asyncio.ensure_future(self._fail_back(client))
        return self._accepted_this_session

    async def _fail_back(self, client: _Client) -> None:
        """Let in-flight messages be acknowledged (up to ``flush_timeout``), then disconnect cleanly."""
        target = self.links[self._switch_to] if self._switch_to is not None else None
        await self._wait_acked(self._flush_timeout)
        if self._client is client and self._connected and target is not None:
            log.info("MQTT uplink %s: link %s has been reachable for %gs (failback_after): switching from %s",
                     self.name, target.name, self._cfg.failback_after, self.active_link.name)
            self._switches += 1
            last = self._last_words() if self._status_topic is None else None  # JSON: online again at once
            if last is not None:
                client.publish(last[0], last[1], qos=1, retain=last[2])
                self._count(last[0], len(last[1]), 1)
            client.disconnect()

    async def _wait_acked(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self._tracked or self._untracked) and self._connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _discard_connect(self, fut: asyncio.Future[Any]) -> None:
        """A connect finished after nobody wanted it any more: close its socket."""
        client = self._client
        if not fut.cancelled() and fut.exception() is None and client is not None:
            sock = client.socket()
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
        """The connection is over: the delivery takes back what is unacknowledged; log once."""
        self._session_closed.set()
        if self._client is not None:
            self._client.drop_out_messages()
        for fut in self._control.values():
            if not fut.done():
                fut.set_result(None)  # nobody waits for an ack that can no longer come
        self._control.clear()
        self._untracked.clear()
        self._tracked.clear()
        if self._on_lost is not None and (self._connected or not self._settled):
            self._on_lost()
        self._settled = True
        if self._link is not None:
            self._link.connected = False
        if not self._connected:
            return
        self._connected = False
        self._connected_event.clear()
        self._connected_since = None
        if not self._stopping and self._switch_to is None:
            link = self.active_link
            self._last_error = f"connection to {link.where} (link {link.name}) lost: {reason}"
            link.last_error = self._last_error
            self._outage_since = time.monotonic()
            nxt = f"; trying link {self.links[(self._active + 1) % len(self.links)].name}" if len(self.links) > 1 else ""
            log.warning("MQTT uplink %s: %s%s", self.name, self._last_error, nxt)
        self._notify(False)

    def _note_failure(self, link: Link, error: str) -> None:
        self._connect_failures += 1
        link.failures += 1
        link.last_error = error
        self._last_error = error
        if not self._settled:
            self._settled = True
            if self._on_lost is not None:
                self._on_lost()
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("MQTT uplink %s: %s; retrying (every link in turn, backoff up to %gs; logged once per "
                        "outage)", self.name, error, self._cfg.reconnect_max)
        else:
            log.debug("MQTT %s", error)

    def _notify(self, connected: bool) -> None:
        if self._on_connection_change is not None and self._loop is not None:
            self._loop.call_soon(self._call_back, self._on_connection_change, connected)

    def _gate(self, open_: bool) -> None:
        if self._on_data_gate is not None and self._loop is not None:
            self._loop.call_soon(self._call_back, self._on_data_gate, open_)

    @staticmethod
    def _call_back(fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:
            log.exception("uplink callback failed")

    def _loop_or_running(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    # ------------------------------------------------------------------------------------ failback probes

    async def _probe_forever(self) -> None:
        """While a link other than the first is active, probe the better ones; ask for a switch once one has
        been reachable for ``failback_after``."""
        every = max(1.0, min(15.0, self._cfg.failback_after / 4 or 1.0))
        while True:
            await asyncio.sleep(every)
            if not self._connected or self._active == 0 or self._switch_to is not None:
                for link in self.links:
                    link.reachable_since = None
                continue
            for i in range(self._active):
                link = self.links[i]
                error = await asyncio.to_thread(_probe, link, f"{self._client_id}-probe", self._ssl.get(link.name),
                                                min(5.0, every))
                link.count_bytes(24 + len(self._client_id))  # about a probe's CONNECT, CONNACK, DISCONNECT
                now = time.monotonic()
                if error is not None:
                    link.reachable_since = None
                    link.last_error = f"failback probe: {error}"
                    continue
                if link.reachable_since is None:
                    link.reachable_since = now
                    log.info("MQTT uplink %s: link %s answers again; failing back after %gs of good probes",
                             self.name, link.name, self._cfg.failback_after)
                if now - link.reachable_since >= self._cfg.failback_after and self._connected:
                    self._switch_to = i
                    break

    async def _save_budget_forever(self) -> None:
        while True:
            await asyncio.sleep(_BUDGET_SAVE_INTERVAL)
            await self._save_budgets()

    async def _save_budgets(self) -> None:
        for link in self.links:
            todo = link.budget_to_save()
            if todo is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(save_file, *todo)

    # -------------------------------------------------------------------------------------------- sending

    def _count(self, topic: str, size: int, qos: int) -> None:
        if self._link is not None:
            self._link.count(topic, size, qos)

    def _publish_now(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        assert self._client is not None
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._dropped += 1
            return
        self._published += 1
        self._count(topic, len(data), qos)
        if qos:
            self._untracked.add(info.mid)

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
        link = self._link
        assert link is not None
        if reason.is_failure:
            self._failure_noted_this_session = True
            self._note_failure(link, f"broker {link.where} (link {link.name}) refused the connection: {reason}")
            return  # paho closes the socket
        client.drop_out_messages()
        self._connected = True
        self._settled = True
        link.connected = True
        link.connects += 1
        link.last_error = None
        self._accepted_this_session = True
        self._connected_since = time.time()
        if self._ever_connected:
            self._reconnects += 1
        self._ever_connected = True
        if self._outage_since is not None:
            log.info("MQTT uplink %s: broker %s reachable again over link %s after %.1f s",
                     self.name, link.where, link.name, time.monotonic() - self._outage_since)
            self._outage_since = None
        else:
            log.info("MQTT uplink %s connected to %s over link %s as %r", self.name, link.where, link.name,
                     self._client_id)
        if self._status_topic is not None:
            self._publish_now(self._status_topic, b"online", 1, True)
        for topic_filter, (qos, _) in self._subscriptions.items():
            client.subscribe(topic_filter, qos)
        for topic, (data, qos) in list(self._retained.items()):
            if topic != self._status_topic:
                self._publish_now(topic, data, qos, True)
        self._connected_event.set()
        if self._on_link_change is not None:
            self._call_back(self._on_link_change, link)
        self._notify(True)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        text = str(reason)
        if text == "Unspecified error":  # what paho reports for a plain EOF or reset
            text = "closed or reset by the peer"
        if not self._connected and not self._stopping and not self._failure_noted_this_session and \
                self._link is not None:
            self._failure_noted_this_session = True
            self._note_failure(self._link, f"connection to {self._link.where} (link {self._link.name}) closed "
                                           f"before the broker accepted it: {text}")
        self._link_down(text)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid in self._tracked:
            self._tracked.discard(mid)
            self._acked += 1
            if self._on_ack is not None:
                self._on_ack(mid)
        elif mid in self._untracked:
            self._untracked.discard(mid)
            self._acked += 1
        fut = self._control.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        for topic_filter, (_, callback) in list(self._subscriptions.items()):
            if paho.topic_matches_sub(topic_filter, message.topic):
                try:
                    callback(message.topic, bytes(message.payload), bool(message.retain))
                except Exception:
                    log.exception("MQTT message callback for %r failed", topic_filter)


class _Stopped(Exception):
    """Ends the supervisor's task group (and with it the probe and budget helpers) after stop()."""
