"""The composition root: builds the engine, the uplinks and the status API from one config and wires them.

- :func:`build` — the engine (:class:`gateway.engine.Gateway`: its sources and their lifecycle), one
  :class:`North` per uplink made by :class:`UplinkBuilder` (hot reload builds added or changed uplinks with
  the same builder, through ``Gateway.build_norths``), and the status API when ``api.enabled``: only then is
  :mod:`gateway.api` (FastAPI, uvicorn: ~20 MiB of imports) loaded.
- :func:`run_gateway` — what ``iiot-gateway run`` and ``demo`` call: certificate files checked, the API's port
  bound before anything starts, SIGINT/SIGTERM/SIGHUP, systemd notifications, the exit code.

Nothing imports this module but the command line (and tests): it may import every part of the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.commands import MqttCommands
from gateway.delivery import Delivery
from gateway.engine import Gateway
from gateway.publisher import Publisher
from gateway.uplink.links import Link
from gateway.uplink.mqtt import MqttUplink

if TYPE_CHECKING:
    from gateway.config.models import Config, MqttSection

log = logging.getLogger("gateway")

#: exit code of a config the gateway cannot run (as ``validate``'s)
EXIT_CONFIG = 2


@dataclass
class North:
    """Everything of one uplink."""

    cfg: MqttSection
    uplink: MqttUplink
    delivery: Delivery
    publisher: Publisher
    commands: MqttCommands | None


class UplinkBuilder:
    """Builds the uplinks of a config for one gateway: MQTT uplink, delivery (spool directory
    ``<spool.path>/<uplink name>``, its own seq), publisher (plain or Sparkplug) and, for the uplink that takes
    write commands, :class:`~gateway.commands.MqttCommands`. Built, not started (the engine starts them)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def __call__(self, cfg: Config, only: set[str] | None = None) -> list[North]:
        """The uplinks of ``cfg`` (those named in ``only``, when given)."""
        ups = cfg.all_uplinks
        writable = any(getattr(t, "writable", False) for a in self.gw.assets.values() for t in a.tags)
        return [self._north(up, i, len(ups), writable) for i, up in enumerate(ups) if only is None or up.name in only]

    def _north(self, up: MqttSection, index: int, count: int, writable: bool) -> North:
        gw = self.gw
        gid = gw.cfg.gateway.id
        path = gw.spool_base / up.name
        publisher: Publisher | None = None
        accept_commands = writable and (up.commands if up.commands is not None else index == 0)

        def link_up(link: Link) -> None:
            if publisher is not None:
                publisher.use_link(link)

        node = None
        if up.format == "sparkplug":
            from gateway.encoders.sparkplug import EdgeNode

            assert up.group_id is not None  # required with format: sparkplug (MqttSection's validator)
            node = EdgeNode(up.group_id, gid, gw.assets, path, key=up.name, profile=up.reduce)
        uplink = MqttUplink(
            up,
            client_id=gid if count == 1 else f"{gid}-{up.name}",
            status_topic=None if node is not None else gw.status_topic,
            on_connection_change=lambda connected: delivery.link_changed(connected),
            on_link_change=link_up,
            state_dir=path,
            will=node.will if node is not None else None,
            goodbye=node.death if node is not None else None,
        )
        delivery = Delivery(
            uplink,
            gw.cfg.spool,
            path=path,
            ack_timeout=gw.cfg.spool.ack_timeout or up.keepalive,
            max_queued=up.max_queued,
            wire=lambda t, b, r: publisher.wire(t, b, r),  # type: ignore[union-attr]  # set below, before any send
        )
        commands = None
        if node is not None:
            from gateway.publisher_sparkplug import SparkplugPublisher

            publisher = SparkplugPublisher(
                up, gw.assets, gw.namespace, uplink, delivery, node=node, commands=accept_commands
            )
        else:
            publisher = Publisher(
                up, gw.assets, gw.namespace, uplink, delivery, metrics=gw._metrics_body, metrics_topic=gw.metrics_topic
            )
            if accept_commands:
                #: write commands on {namespace}/{asset}/cmd of this uplink's broker, answered on the same
                commands = MqttCommands(gw.assets, gw.namespace, uplink.publish, max_age=up.cmd_max_age)
                uplink.subscribe(commands.topic_filter, commands.on_message)
        return North(up, uplink, delivery, publisher, commands)


def build(cfg: Config) -> Gateway:
    """The gateway of ``cfg``, wired and not started: ``await gw.run(stop, gw.bind_api())`` runs it."""
    gw = Gateway(cfg)
    gw.build_norths = builder = UplinkBuilder(gw)
    gw.norths = builder(cfg)
    if cfg.api.enabled:
        from gateway.api import serve_api  # FastAPI and uvicorn: only a gateway that serves the API loads them

        gw.serve_api = serve_api
    return gw


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``; a second one ends the process at once."""
    loop = asyncio.get_running_loop()

    def _on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signame)
            raise SystemExit(130)
        log.info("%s received, stopping", signame)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, sig.name)


def install_reload_signal(gw: Gateway) -> None:
    """SIGHUP re-reads the config file (gateway/reload.py); an invalid one is refused and logged."""
    from gateway.reload import ReloadRefused, reload_file

    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await reload_file(gw)
        except ReloadRefused:
            pass  # logged by reload_file

    def on_hup() -> None:
        log.info("SIGHUP received: reloading %s", gw.config_path)
        task = loop.create_task(reload(), name="reload")
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)


async def run_gateway(cfg: Config, stop: asyncio.Event | None = None, config_path: str | None = None) -> int:
    """Run the daemon on a loaded config until ``stop`` is set (or a signal arrives); the exit code."""
    from gateway.spool import SpoolError
    from gateway.uplink.tls import UplinkConfigError, build_ssl_context

    for up in cfg.all_uplinks:  # unreadable certificate files are a config error: say so before starting
        for tls in [up.tls] + [link.tls for link in up.links or ()]:
            if tls is None:
                continue
            try:
                await asyncio.to_thread(build_ssl_context, tls)
            except UplinkConfigError as exc:
                log.error("uplink %s: %s", up.name, exc)
                return EXIT_CONFIG
    try:
        gw = build(cfg)
    except (ValueError, TypeError, MemoryError) as exc:  # a config problem validate missed: a bug, not a traceback loop
        log.error("the gateway cannot start with this config: %s (validate should have said so: please report it)", exc)
        return EXIT_CONFIG
    try:
        sock = gw.bind_api()
    except OSError as exc:
        log.error("cannot serve the status API on %s: %s", cfg.api.listen, exc.strerror or exc)
        return 1
    gw.config_path = config_path
    if stop is None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        install_reload_signal(gw)
    systemd = _systemd_notifications(gw, stop)
    try:
        await gw.run(stop, sock)
    except SpoolError as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:  # already logged where it happened; the daemon is down in order
        log.error("gateway stopped after a fatal error: %s", exc)
        return 1
    finally:
        for task in systemd:
            task.cancel()
    return 0


def _systemd_notifications(gw: Gateway, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Under systemd (``$NOTIFY_SOCKET``): READY=1 after every uplink's first connect attempt, WATCHDOG=1 pings
    until the daemon is down, STOPPING=1 when a stop begins (gateway/sdnotify.py). Nothing outside systemd."""
    from gateway.sdnotify import Notifier

    notifier = Notifier()
    if not notifier.enabled:
        return []

    async def say_stopping() -> None:
        try:
            await stop.wait()
            notifier.send("STOPPING=1")
            await asyncio.Event().wait()  # keep the socket until the daemon is down
        finally:
            notifier.close()

    settled = [lambda up=n.uplink: up.settled for n in gw.norths]
    return [
        asyncio.create_task(notifier.supervise(settled), name="systemd-notify"),
        asyncio.create_task(say_stopping(), name="systemd-stopping"),
    ]
