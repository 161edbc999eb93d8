"""The engine: one root TaskGroup with the sources (one task each), the uplinks and the status API it is given.

The engine owns the sources and the lifecycle; :mod:`gateway.daemon` (the composition root) builds the
uplinks (one :class:`~gateway.daemon.North` each: MQTT uplink, delivery with its spool, publisher, commands)
through its :class:`~gateway.daemon.UplinkBuilder` and, when ``api.enabled``, gives the engine the status
API's ``serve_api``. Hot reload (:mod:`gateway.reload`) builds added or changed uplinks with the same builder.
A dead cloud broker never holds up the plant broker: the uplinks share nothing but the ring buffers they read.

Start sinks before sources, stop sources before sinks: on stop, the source tasks are cancelled first
(drivers closed), then one final publish per uplink drains what they produced, then the deliveries spool
what is unacknowledged, then the uplinks flush and say ``offline``, then the API stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.driver import Shared, registry
from gateway.source import AssetRuntime

if TYPE_CHECKING:
    from gateway.config.models import AssetBase, Config
    from gateway.daemon import North
    from gateway.delivery import Delivery
    from gateway.publisher import Publisher
    from gateway.uplink.mqtt import MqttUplink

#: builds the uplinks of a config, those named in ``only`` when given (gateway.daemon.UplinkBuilder)
NorthBuilder = Callable[..., "list[North]"]
#: the status API for a bound socket: (server with ``should_exit``, coroutine that serves) (gateway.api.serve_api)
ServeApi = Callable[["Gateway", socket.socket], "tuple[Any, Coroutine[Any, Any, None]]"]

log = logging.getLogger("gateway")


def migrate_spool(base: Path, name: str) -> None:
    """A spool of the one-uplink layout (``<base>/backlog``, ``wal``, ``seq``) moves to ``<base>/<name>``, so an
    upgrade replays what an older version spooled and keeps its seq (worker thread)."""
    target = base / name
    old = [base / n for n in ("backlog", "wal", "seq") if (base / n).exists()]
    if not old or target.exists():
        return
    target.mkdir(parents=True)
    for path in old:
        shutil.move(str(path), str(target / path.name))
    log.info("spool: moved %s to %s (one directory per uplink)", ", ".join(p.name for p in old), target)


class Gateway:
    """Sources, lifecycle and status of the daemon; build one with :func:`gateway.daemon.build`, which also
    sets :attr:`build_norths`, :attr:`norths` and (API enabled) :attr:`serve_api`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        self.namespace: str = cfg.gateway.namespace
        #: resources the drivers of several assets share (the arbiter of one RS-485 port), kept across reloads
        self.shared = Shared()
        self.assets: dict[str, AssetRuntime] = {a.id: self._asset(a) for a in cfg.assets}
        self.status_topic = f"{self.namespace}/_gateway/{cfg.gateway.id}/status"
        self.metrics_topic = f"{self.namespace}/_gateway/{cfg.gateway.id}/metrics"
        self.spool_base = Path(cfg.spool.path) if cfg.spool.path else Path(cfg.gateway.state_dir) / "spool"
        #: the uplinks, in config order, and the builder of more (set by gateway.daemon.build)
        self.norths: list[North] = []
        self.build_norths: NorthBuilder | None = None
        #: the status API's server factory; None: no API (api.enabled is false), FastAPI is never imported
        self.serve_api: ServeApi | None = None
        self.config_loaded = True
        self._api_server: Any = None
        #: while running: the root task group, the stop event, and the tasks of each source and uplink
        self._tg: asyncio.TaskGroup | None = None
        self._stop: asyncio.Event | None = None
        self._sources: dict[str, asyncio.Task[None]] = {}
        self._north_tasks: dict[int, list[asyncio.Task[None]]] = {}
        #: hot reload (gateway/reload.py): the file it re-reads, the config before the last reload
        self.config_path: str | None = None
        self.previous_cfg: Config | None = None
        self.reload_lock = asyncio.Lock()
        #: what made the daemon stop by itself (a failed uplink, API, ...); raised by run() after shutdown
        self.fatal: Exception | None = None

    def _asset(self, a: AssetBase) -> AssetRuntime:
        cfg = self.cfg
        return AssetRuntime(a, registry()[a.source.driver], buffer_seconds=cfg.buffer.seconds,
                            state_dir=Path(cfg.gateway.state_dir), shared=self.shared,
                            on_state=self._asset_state_changed, log_summary_interval=cfg.gateway.log_summary_interval)

    # -- the first uplink, for callers that know one (tests, the demo) --------------------------------
    @property
    def uplink(self) -> MqttUplink:
        return self.norths[0].uplink

    @property
    def delivery(self) -> Delivery:
        return self.norths[0].delivery

    @property
    def publisher(self) -> Publisher:
        return self.norths[0].publisher

    # -- messages ---------------------------------------------------------------------------------------
    def _asset_state_changed(self, asset: AssetRuntime) -> None:
        for north in getattr(self, "norths", ()):
            north.publisher.asset_state(asset)

    def _metrics_body(self) -> bytes:
        """The gateway's own counters, retained JSON on ``{namespace}/_gateway/{id}/metrics`` of every uplink
        (the plain ``status`` topic keeps its online/offline string)."""
        return json.dumps(self.gateway_status(legacy=False), separators=(",", ":"), default=str).encode()

    def publish_once(self) -> int:
        """Every uplink: reduce every asset's new samples into one message each; messages handed over."""
        return sum(n.publisher.publish_once() for n in self.norths)

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
        if api_socket is not None and self.serve_api is None:
            raise RuntimeError("an API socket but no API: build the gateway with gateway.daemon.build()")
        log.info(
            "iiot-gateway %s starting: %d asset(s), %d tag(s); uplink(s) %s",
            __version__, len(self.assets), sum(len(a.tags) for a in self.assets.values()),
            "; ".join(f"{n.uplink.name}: " + ", ".join(f"{k.name} {k.where}" for k in n.uplink.links)
                      for n in self.norths),
        )
        if len(self.norths) == 1:
            await asyncio.to_thread(migrate_spool, self.spool_base, self.norths[0].uplink.name)
        try:
            for north in self.norths:
                await north.delivery.open()
            await self._run_tasks(stop, api_socket)
        finally:  # whatever ended the run, unacknowledged messages go to the spool and its lock is released
            for north in self.norths:
                await north.delivery.close()
        log.info("stopped")
        if self.fatal is not None:
            raise self.fatal

    async def _stop_sources(self, asset_ids: list[str]) -> None:
        """Cancel the source tasks of ``asset_ids``, again if a driver library swallowed the first cancellation."""
        for asset_id in asset_ids:
            self.assets[asset_id].stopping = True
        pending = {self._sources.pop(a) for a in asset_ids if a in self._sources}
        if not pending:
            return
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

    def _start_north(self, n: North) -> None:
        """The tasks of one uplink: its MQTT supervisor, its delivery and its publisher (delivery opened)."""
        assert self._tg is not None and self._stop is not None
        tg, stop, name = self._tg, self._stop, n.uplink.name
        self._north_tasks[id(n)] = [
            tg.create_task(self._guarded(n.uplink.run(), f"uplink {name}", stop), name=f"uplink:{name}"),
            tg.create_task(self._guarded(n.delivery.run(), f"delivery {name}", stop), name=f"delivery:{name}"),
            tg.create_task(self._guarded(n.publisher.run(), f"publisher {name}", stop), name=f"publisher:{name}"),
        ]

    def _start_source(self, asset: AssetRuntime) -> None:
        assert self._tg is not None
        self._sources[asset.id] = self._tg.create_task(asset.run(), name=f"source:{asset.id}")

    async def _stop_norths(self, norths: list[North]) -> None:
        """Stop uplinks in order: commands, then a final publish, the delivery (unacknowledged messages go to
        the spool), then the MQTT session (``offline`` / NDEATH)."""
        for n in norths:
            if n.commands is not None:
                await n.commands.close()
            n.publisher.detach()
            await n.publisher.close()
        tasks = [self._north_tasks.pop(id(n), [None, None, None]) for n in norths]
        publishers = [t[2] for t in tasks if t[2] is not None]
        for task in publishers:
            task.cancel()
        await asyncio.gather(*publishers, return_exceptions=True)
        for n in norths:
            n.publisher.publish_once()
        await asyncio.gather(*(n.delivery.close() for n in norths))
        deliveries = [t[1] for t in tasks if t[1] is not None]
        for task in deliveries:
            task.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        await asyncio.gather(*(n.uplink.stop() for n in norths))
        await asyncio.gather(*(t[0] for t in tasks if t[0] is not None), return_exceptions=True)

    async def _run_tasks(self, stop: asyncio.Event, api_socket: socket.socket | None) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg, self._stop = tg, stop
            api_task = None
            for n in self.norths:
                self._start_north(n)
            if api_socket is not None and self.serve_api is not None:
                self._api_server, api_coro = self.serve_api(self, api_socket)
                api_task = tg.create_task(self._guarded(api_coro, "status API", stop), name="api")
            for a in self.assets.values():
                self._start_source(a)
            await stop.wait()

            async with self.reload_lock:  # a reload in progress finishes first
                log.info("stopping: sources")
                await self._stop_sources(list(self.assets))
                log.info("stopping: uplinks (unacknowledged messages go to the spool)")
                await self._stop_norths(self.norths)
            if api_task is not None:
                self._api_server.should_exit = True
                try:
                    async with asyncio.timeout(2):
                        await api_task
                except TimeoutError:
                    api_task.cancel()

    @property
    def ready(self) -> bool:
        return self.config_loaded and all(n.uplink.connected for n in self.norths)

    def gateway_status(self, *, legacy: bool = True) -> dict[str, Any]:
        """The gateway's status: ``uplinks`` by name; with ``legacy`` (the status API) also the first uplink's
        figures under their one-uplink names (``uplink``, ``spool``, ``seq``, ...), not in the metrics topic."""
        uplinks = {n.uplink.name: self._uplink_status(n) for n in self.norths}
        first = next(iter(uplinks.values()))
        head = {
            "id": self.cfg.gateway.id,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "namespace": self.namespace,
            "uplinks": uplinks,
        }
        if not legacy:
            return head
        return {
            **head,
            "uplink": {k: v for k, v in first.items() if k not in ("spool", "seq", "messages_published",
                                                                      "publish_latency_ms", "profile")},
            "seq": first["seq"],
            "messages_published": first["messages_published"],
            "spool": first["spool"],
            "publish_latency_ms": first["publish_latency_ms"],
        }

    @staticmethod
    def _uplink_status(n: North) -> dict[str, Any]:
        p = n.publisher
        return {
            **n.uplink.stats,
            "seq": p.seq,
            "messages_published": p.messages_published,
            "profile": {"publish_interval_s": p.profile.publish_interval, "payload": p.profile.payload,
                        "compression": p.profile.compression, "qos": p.profile.qos},
            "spool": n.delivery.stats(),
            "publish_latency_ms": p.latency_summary(),
        }
