"""The daemon: one root TaskGroup with the uplink, the status API, the publisher and one task per source.

Start sinks before sources, stop sources before sinks: on stop, the source tasks are cancelled first
(drivers closed), then one final publish drains what they produced, then the uplink flushes and says
``offline``, then the API stops.

When an asset's message is sent (docs/performance.md, "Latency"): an asset whose source delivers data no
more often than ``mqtt.publish_interval`` (``poll``, or a subscription's ``publishing_interval``, at least
``publish_interval``) is published right after each poll or notification, so its samples wait for nothing;
an asset polled faster has the samples of several polls batched into one message per ``publish_interval``
(the publisher's timer), which keeps metered links cheap. The timer also sends heartbeats of every asset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.driver import registry
from gateway.delivery import Delivery, count_samples, json_wire
from gateway.encode import encode_json, wire
from gateway.source import AssetRuntime
from gateway.uplink.mqtt import MqttUplink
from gateway.writes import MqttCommands

log = logging.getLogger("gateway")


def source_interval(asset: AssetRuntime) -> float:
    """How often an asset's source delivers data: a subscription's publishing interval, else its poll."""
    return float(getattr(asset.source, "publishing_interval", None) or asset.source.poll)


class Gateway:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        self.namespace: str = cfg.gateway.namespace
        drivers = registry()
        self.assets: dict[str, AssetRuntime] = {
            a.id: AssetRuntime(
                a,
                drivers[a.source.driver],
                buffer_seconds=cfg.buffer.seconds,
                heartbeat=cfg.mqtt.heartbeat,
                on_state=self._asset_state_changed,
                state_dir=cfg.gateway.state_dir,
                log_summary_interval=cfg.gateway.log_summary_interval,
            )
            for a in cfg.assets
        }
        if cfg.mqtt.reduce is not None:  # the uplink's reduction profile fills what tags leave unset
            for asset in self.assets.values():
                asset.reducer.use_profile(cfg.mqtt.reduce)
        self.status_topic = f"{self.namespace}/_gateway/{cfg.gateway.id}/status"
        self.uplink = MqttUplink(
            cfg.mqtt,
            client_id=cfg.gateway.id,
            status_topic=self.status_topic,
            on_connection_change=self._uplink_changed,
        )
        #: every data message goes through the delivery: RAM front, on-disk spool, replay (docs/delivery-guarantees.md)
        self.metrics_topic = f"{self.namespace}/_gateway/{cfg.gateway.id}/metrics"
        spool = cfg.spool
        self.delivery = Delivery(
            self.uplink,
            spool,
            path=Path(spool.path) if spool.path else Path(cfg.gateway.state_dir) / "spool",
            ack_timeout=spool.ack_timeout or cfg.mqtt.keepalive,
            max_queued=cfg.mqtt.max_queued,
            wire=self._wire,
        )
        #: write commands on {namespace}/{asset}/cmd, listened to when the config has a writable tag
        self.commands = MqttCommands(self.assets, self.namespace, self.uplink.publish)
        if any(getattr(t, "writable", False) for a in self.assets.values() for t in a.tags):
            for asset_id in self.assets:
                self.uplink.subscribe(self.commands.topic(asset_id), self.commands.on_message)
        #: assets published right after each batch (see the module docstring); the others on the timer
        interval = cfg.mqtt.publish_interval
        for asset in self.assets.values():
            if source_interval(asset) >= interval:
                asset.on_batch = self._publish_after_batch
        #: seconds from a batch's read done to its message handed to the uplink, for assets published after
        #: their batches (the newest 4096; p50/p99 in gateway_status)
        self.publish_latency: deque[float] = deque(maxlen=4096)
        self.seq = 0
        self.messages_published = 0
        self.config_loaded = True
        self._api_server: Any = None
        #: what made the daemon stop by itself (a failed uplink, API, ...); raised by run() after shutdown
        self.fatal: Exception | None = None

    # -- topics and messages --------------------------------------------------------------------------
    def data_topic(self, asset_id: str) -> str:
        return f"{self.namespace}/{asset_id}/data"

    def asset_status_topic(self, asset_id: str) -> str:
        return f"{self.namespace}/{asset_id}/status"

    def _asset_state_changed(self, asset: AssetRuntime) -> None:
        self.uplink.publish(self.asset_status_topic(asset.id), asset.status.state, qos=1, retain=True)

    def _uplink_changed(self, connected: bool) -> None:
        self.delivery.link_changed(connected)
        if connected:  # a restarted broker may have lost retained messages: say them again
            for asset in self.assets.values():
                self._asset_state_changed(asset)
            self.publish_metrics()

    def _wire(self, topic: str, body: bytes, replay: bool) -> tuple[str, bytes]:
        """What goes on the wire for a data message's JSON ``body``: marked when replayed, then compressed
        as configured (called at send time, so spooled messages are stored uncompressed once)."""
        return wire(*json_wire(topic, body, replay), self.cfg.mqtt.compression)

    def publish_metrics(self) -> None:
        """The gateway's own counters, retained JSON on ``{namespace}/_gateway/{id}/metrics`` (the plain
        ``status`` topic keeps its online/offline string)."""
        if self.uplink.connected:
            body = json.dumps(self.gateway_status(), separators=(",", ":"), default=str)
            self.uplink.publish(self.metrics_topic, body, qos=1, retain=True)

    async def _metrics_forever(self, every: float = 10.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.publish_metrics()

    def publish_once(self) -> int:
        """Reduce every asset's new samples into one message each and hand them to the uplink."""
        now_mono = time.monotonic()
        sent = sum(self._publish_asset(asset, now_mono) for asset in self.assets.values())
        return sent

    def _publish_asset(self, asset: AssetRuntime, now_mono: float) -> int:
        """One asset's message, if anything is due: 1 when one was handed to the delivery, else 0."""
        tags = asset.reducer.reduce(now_mono)
        if not tags:
            return 0
        self.seq = self.delivery.next_seq()  # numbered before anything can lose it
        msg = {"seq": self.seq, "ts": time.time_ns() // 1_000_000, "asset": asset.id, "tags": tags}
        body = encode_json(msg)  # compression is applied at send time (_wire)
        self.delivery.submit(self.seq, self.data_topic(asset.id), body, samples=count_samples(tags),
                             qos=self.cfg.mqtt.qos)
        self.messages_published += 1
        return 1

    def _publish_after_batch(self, asset: AssetRuntime) -> None:
        """A source wrote a batch: publish its asset now, unless it published less than half an interval
        ago (a device that suddenly streams faster than it was configured to falls back to the timer)."""
        now = time.monotonic()
        if now - asset.last_publish >= 0.5 * self.cfg.mqtt.publish_interval:
            first = asset.last_publish == float("-inf")
            asset.last_publish = now
            if self._publish_asset(asset, now) and not first:  # the first message (all tags, cold) is not typical
                self.publish_latency.append(time.monotonic() - asset.read_done)

    async def _publish_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.mqtt.publish_interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            if next_at < loop.time():
                next_at = loop.time() + interval
            now = time.monotonic()
            for asset in self.assets.values():
                # assets published after their batches need the timer only when no batch came for an
                # interval (heartbeats, a device gone) or a batch came too soon after the previous one
                if asset.on_batch is None or now - asset.last_publish >= interval:
                    self._publish_asset(asset, now)

    # -- lifecycle ------------------------------------------------------------------------------------
    def bind_api(self) -> socket.socket | None:
        """Bind the status API's socket (before anything starts, so a busy port is reported at once)."""
        api = self.cfg.api
        if not api.enabled:
            return None
        family = socket.AF_INET6 if ":" in api.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((api.host, api.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def run(self, stop: asyncio.Event, api_socket: socket.socket | None = None) -> None:
        """Run until ``stop`` is set, then shut down in order (sources, final publish, uplink, API)."""
        from gateway.api import serve_api  # FastAPI import is heavy; only the daemon needs it

        log.info(
            "iiot-gateway %s starting: %d asset(s), %d tag(s); broker %s:%d",
            __version__, len(self.assets), sum(len(a.tags) for a in self.assets.values()),
            self.cfg.mqtt.host, self.cfg.mqtt.port,
        )
        await self.delivery.open()
        try:
            await self._run_tasks(stop, api_socket, serve_api)
        finally:  # whatever ended the run, unacknowledged messages go to the spool and its lock is released
            await self.delivery.close()
        log.info("stopped")
        if self.fatal is not None:
            raise self.fatal

    async def _stop_sources(self, sources: list[asyncio.Task]) -> None:
        """Cancel the source tasks, again if a driver library swallowed the first cancellation."""
        for asset in self.assets.values():
            asset.stopping = True
        pending = set(sources)
        for _ in range(8):
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if not pending:
                return
        log.warning("source task(s) %s did not stop in 4 s", ", ".join(t.get_name() for t in pending))

    async def _guarded(self, coro: Any, what: str, stop: asyncio.Event) -> None:
        """Run a part the daemon cannot live without; if it fails, stop the whole daemon in order.

        A failure inside a TaskGroup child would cancel the group at once, skipping the orderly shutdown
        (final publish, spool flush, offline status); instead it is recorded in ``self.fatal`` and ``stop``
        is set, and :meth:`run` raises it once everything is down.
        """
        try:
            await coro
        except Exception as exc:
            log.error("%s failed: %s; stopping the gateway", what, exc, exc_info=not isinstance(exc, ValueError))
            self.fatal = self.fatal or exc
            stop.set()

    async def _run_tasks(self, stop: asyncio.Event, api_socket: socket.socket | None, serve_api: Any) -> None:
        async with asyncio.TaskGroup() as tg:
            uplink_task = tg.create_task(self._guarded(self.uplink.run(), "MQTT uplink", stop), name="uplink")
            delivery_task = tg.create_task(self._guarded(self.delivery.run(), "delivery", stop), name="delivery")
            metrics_task = tg.create_task(self._guarded(self._metrics_forever(), "metrics", stop), name="metrics")
            api_task = None
            if api_socket is not None:
                self._api_server, api_coro = serve_api(self, api_socket)
                api_task = tg.create_task(self._guarded(api_coro, "status API", stop), name="api")
            publisher = tg.create_task(self._guarded(self._publish_forever(), "publisher", stop), name="publisher")
            sources = [tg.create_task(a.run(), name=f"source:{a.id}") for a in self.assets.values()]
            await stop.wait()

            await self.commands.close()
            log.info("stopping: sources")
            await self._stop_sources(sources)
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            self.publish_once()
            log.info("stopping: delivery (unacknowledged messages go to the spool)")
            metrics_task.cancel()
            await self.delivery.close()
            delivery_task.cancel()
            await asyncio.gather(metrics_task, delivery_task, return_exceptions=True)
            log.info("stopping: uplink")
            await self.uplink.stop()
            await asyncio.gather(uplink_task, return_exceptions=True)
            if api_task is not None:
                self._api_server.should_exit = True
                try:
                    async with asyncio.timeout(2):
                        await api_task
                except TimeoutError:
                    api_task.cancel()

    @property
    def ready(self) -> bool:
        return self.config_loaded and self.uplink.connected

    def gateway_status(self) -> dict[str, Any]:
        return {
            "id": self.cfg.gateway.id,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "namespace": self.namespace,
            "uplink": {"connected": self.uplink.connected, **self.uplink.stats},
            "seq": self.seq,
            "messages_published": self.messages_published,
            "spool": self.delivery.stats(),
            "dropped_messages": self.delivery.backlog.dropped_messages,
            "dropped_samples": self.delivery.backlog.dropped_samples,
            "publish_latency_ms": self._latency_summary(),
        }

    def _latency_summary(self) -> dict[str, Any]:
        """Read done -> message handed to the uplink, for assets published after each batch (ms)."""
        xs = sorted(self.publish_latency)
        if not xs:
            return {"n": 0}

        def pick(q: float) -> float:
            return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 3)

        return {"n": len(xs), "p50": pick(0.5), "p99": pick(0.99), "max": round(xs[-1] * 1000, 3)}
