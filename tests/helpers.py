"""Test helpers shared by the suite: free ports, MQTT brokers (Mosquitto, embedded or amqtt), a test subscriber, and
a TCP proxy that can refuse, cut or black-hole a link (fault injection that a real broker cannot produce), the
gateway as a process, and the one builder of gateway config files (:func:`gateway_config`)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from ruamel.yaml import YAML
from paho.mqtt.enums import CallbackAPIVersion

from simulators.local_broker import LocalBroker, mosquitto_binary  # noqa: F401 (re-exported for tests)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true; False after ``timeout`` seconds (for state with no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def wait_port_open(host: str, port: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"nothing accepts connections on {host}:{port}") from None
            await asyncio.sleep(0.02)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


# --------------------------------------------------------------------------------------------- brokers


def MosquittoBroker(workdir: Path, port: int | None = None, host: str = "127.0.0.1", *,
                    extra_conf: str = "") -> LocalBroker:
    """A real Mosquitto on ``host:port`` (a free port by default); ``stop()``/``start()`` on the same port."""
    return LocalBroker(host, port or free_port(host), kind="mosquitto", workdir=workdir, extra_conf=extra_conf)


def EmbeddedBrokerHandle(port: int | None = None, host: str = "127.0.0.1") -> LocalBroker:
    """The pure-Python broker behind the same interface."""
    return LocalBroker(host, port or free_port(host), kind="embedded")


class AmqttBrokerHandle:
    """The PyPI broker amqtt (``pip install amqtt``, not a dependency) in-process, behind LocalBroker's interface.

    Only here so tests/test_mqtt_broker.py can show why it is not the demo's fallback broker (see README,
    "The embedded broker"). One TCP listener on ``host:port``, anonymous clients, no $SYS topics. ``stop()``
    raises TimeoutError when amqtt's shutdown does not finish within ``stop_timeout`` seconds.
    """

    kind = "amqtt"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", *, stop_timeout: float = 5.0) -> None:
        self.host, self.port, self.stop_timeout = host, port or free_port(host), stop_timeout
        self._broker: Any = None

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def start(self) -> None:
        from amqtt.broker import Broker

        if self._broker is not None:
            return
        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })
        await self._broker.start()

    async def stop(self, *, graceful: bool = False) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            async with asyncio.timeout(self.stop_timeout):
                await broker.shutdown()


# ------------------------------------------------------------------------------------------ subscriber


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttSubscriber:
    """A test-side MQTT client (paho, its own network thread) that records every message it receives.

    ``await next(predicate)`` returns the next not yet consumed message matching ``predicate``; ``messages``
    holds them all. It reconnects and resubscribes by itself: ``generation`` counts SUBACKs, and
    ``await subscribed(after=n)`` waits for a SUBACK beyond the ``n``-th (e.g. after a broker restart).
    """

    _ids = itertools.count(1)

    def __init__(self, host: str, port: int, topic_filter: str, *, qos: int = 1) -> None:
        self.topic_filter, self.qos = topic_filter, qos
        self.messages: list[Received] = []
        self._cursor = 0  # every message before it has been returned by next()
        self._consumed: set[int] = set()  # returned by next(), at or after the cursor
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.generation = 0
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{next(self._ids)}")
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    async def start(self, timeout: float = 10.0) -> MqttSubscriber:
        await asyncio.to_thread(self._client.connect, self._host, self._port, 5)
        self._client.loop_start()
        await self.subscribed(timeout=timeout)
        return self

    async def subscribed(self, after: int = 0, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.generation <= after:
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    async def next(self, predicate: Callable[[Received], bool] | None = None, timeout: float = 10.0) -> Received:
        """The oldest not yet returned message matching ``predicate`` (waiting for it if needed). Messages it
        skips over stay available to later calls with other predicates."""
        async with asyncio.timeout(timeout):
            while True:
                for i in range(self._cursor, len(self.messages)):
                    if i in self._consumed:
                        continue
                    msg = self.messages[i]
                    if predicate is None or predicate(msg):
                        self._consumed.add(i)
                        while self._cursor in self._consumed:
                            self._consumed.discard(self._cursor)
                            self._cursor += 1
                        return msg
                self._changed.clear()
                await self._changed.wait()

    async def collect(self, n: int, predicate: Callable[[Received], bool] | None = None,
                      timeout: float = 10.0) -> list[Received]:
        """Wait until ``n`` messages matching ``predicate`` were received (in total); return all that match."""
        def matching() -> list[Received]:
            return [m for m in self.messages if predicate is None or predicate(m)]
        async with asyncio.timeout(timeout):
            while len(matching()) < n:
                self._changed.clear()
                await self._changed.wait()
        return matching()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic_filter, self.qos)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._loop.call_soon_threadsafe(self._suback)

    def _suback(self) -> None:
        self.generation += 1
        self._changed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = Received(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        self._loop.call_soon_threadsafe(self._record, received)

    def _record(self, received: Received) -> None:
        self.messages.append(received)
        self._changed.set()


# ----------------------------------------------------------------------------------------------- proxy


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``. ``refuse()`` closes the listener (connects are refused),
    ``accept()`` reopens it on the same port, ``cut()`` closes every forwarded link, ``blackhole()`` keeps links
    open but silently discards what the client sends (a half-open link, as after a cable is pulled)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host, self.port = "127.0.0.1", free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blackhole = False
        #: TCP connections accepted so far (a client's connect attempts)
        self.connections = 0

    async def accept(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)

    async def refuse(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def cut(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def blackhole(self, on: bool = True) -> None:
        self._blackhole = on

    async def close(self) -> None:
        await self.refuse()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            b_reader, b_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.transport.abort()
            return
        self._links.update((c_writer, b_writer))
        up = asyncio.create_task(self._pump(c_reader, b_writer, upstream=True))
        down = asyncio.create_task(self._pump(b_reader, c_writer, upstream=False))
        self._tasks.update((up, down))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if self._blackhole and not up.done():
            await asyncio.wait({up})  # half-open: the client must not learn that the far end is gone
        for task in (up, down):
            task.cancel()
        for writer in (c_writer, b_writer):
            writer.transport.abort()
            self._links.discard(writer)
        self._tasks.difference_update((up, down))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._blackhole:
                    continue
                writer.write(data)
                await writer.drain()


# ------------------------------------------------------------------------------------ the gateway process

REPO = Path(__file__).resolve().parents[1]


async def start_gateway(cfg: Path, *, pythonpath: Sequence[Path] = ()) -> asyncio.subprocess.Process:
    """``iiot-gateway run cfg`` as its own process (this checkout's code), its log discarded; ``pythonpath``:
    more import roots for the child (e.g. a driver distribution the test registered without installing it)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run", str(cfg), cwd=REPO, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [REPO, *pythonpath]))},
    )


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and the orderly stop the gateway promises: exit code 0 within 10 s."""
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def reap(proc: asyncio.subprocess.Process) -> None:
    """For ``finally:`` — kill a gateway process a failed test left running."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


# ------------------------------------------------------------------------------------ a gateway config file

#: namespace of the configs :func:`gateway_config` writes (the topics are ``{NAMESPACE}/{asset}/...``)
NAMESPACE = "acme/test/line1"


def gateway_config(tmp_path: Path, *, assets_yaml: str, mqtt_port: int | None = None, api_port: int | None = None,
                   name: str = "gateway.yaml", **sections: Any) -> Path:
    """Write a whole gateway config to ``tmp_path / name`` and return its path: the one way tests build one.

    ``assets_yaml`` is the ``assets:`` list (YAML, any indentation). The other sections have defaults:

    - ``gateway``: id ``test-gw``, :data:`NAMESPACE`, ``state_dir`` in ``tmp_path / "state"``;
    - ``mqtt``: ``127.0.0.1:mqtt_port``, publish_interval 200ms, keepalive 5s, reconnect_max 1s;
    - ``api``: listening on ``127.0.0.1:api_port``; without ``api_port`` it is off;
    - ``buffer``: 60 seconds.

    A keyword per section changes it: a mapping is merged into the default (a key set to None is left out),
    a string is the section's YAML (``mqtt="links: [...]"``) instead of the default, None leaves the
    section out (``mqtt=None, uplinks="- name: plant ..."``). Sections without a default (``spool``,
    ``uplinks``) come after these, in the order given.
    """
    default: dict[str, Any] = {
        "gateway": {"id": "test-gw", "namespace": NAMESPACE, "state_dir": tmp_path / "state"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "publish_interval": "200ms", "keepalive": "5s",
                 "reconnect_max": "1s"},
        "api": {"listen": f"127.0.0.1:{api_port}"} if api_port else {"enabled": False},
        "buffer": {"seconds": 60},
    }
    for key, value in sections.items():
        base = default.get(key)
        default[key] = {**base, **value} if isinstance(value, dict) and isinstance(base, dict) else value
    text = "".join(_section(key, value) for key, value in default.items() if value is not None)
    path = tmp_path / name
    path.write_text(text + _section("assets", assets_yaml), encoding="utf-8")
    return path


def _section(key: str, value: dict[str, Any] | str) -> str:
    if isinstance(value, str):
        body = textwrap.dedent(value).strip("\n")
    else:  # plain YAML as a person writes it (tests may edit the text: "publish_interval: 200ms")
        out = io.StringIO()
        yaml = YAML()
        yaml.default_flow_style = False
        yaml.dump({k: str(v) if isinstance(v, Path) else v for k, v in value.items() if v is not None}, out)
        body = out.getvalue().strip("\n")
    return f"{key}:\n{textwrap.indent(body, '  ')}\n"
