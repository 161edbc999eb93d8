"""The publisher of a ``format: sparkplug`` uplink: a Sparkplug B 3.0 edge node (README "Sparkplug B").

The same schedule, reducers and delivery as the JSON publisher (:class:`~gateway.publisher.Publisher`); what
differs is the session around the data:

- the uplink's last will is NDEATH with a new ``bdSeq`` per connect (:meth:`EdgeNode.will`, asked by the
  uplink in its connecting thread), and NDEATH is published before a planned disconnect;
- once connected (and, with ``primary_host_id``, once that host's STATE says online): NBIRTH, then a DBIRTH
  per connected asset, and only then data: until then the uplink is on ``hold`` and data goes to the spool,
  replayed afterwards with ``is_historical`` (QoS 0 data then loses nothing the gateway made);
- DDATA carries changed metrics only, by alias, QoS 0; ``seq`` is stamped at send time (:meth:`wire`);
- DDEATH when an asset's device is lost, DBIRTH before its first data when it returns;
- NCMD ``Node Control/Rebirth`` sends the births again; DCMD writes go through the same checks as API and
  MQTT writes (:func:`gateway.writes.perform`); the read-back value comes with the next poll's DDATA;
- the primary host going offline closes the connection (the broker publishes the NDEATH will) and the uplink
  tries its next link.

No JSON status, ``last`` or metrics messages are published on a Sparkplug uplink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.encoders.sparkplug import BIRTH_QOS, DATA_QOS, EdgeNode, parse_state, state_topic
from gateway.logsafe import safe
from gateway.publisher import Publisher
from gateway.reduce import snapshot
from gateway.uplink.links import Link
from gateway.writes import perform

if TYPE_CHECKING:
    from gateway.source import AssetRuntime

log = logging.getLogger("gateway.sparkplug")


class SparkplugPublisher(Publisher):
    """Data of every asset for one Sparkplug uplink; ``node`` is its :class:`EdgeNode`."""

    def __init__(self, *args: Any, node: EdgeNode, commands: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node = node
        self.primary_host = self.cfg.primary_host_id
        self._host_online = self.primary_host is None
        self._host_ts = -1
        self._born: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.births = 0
        up = self.uplink
        up.subscribe(node.topic("NCMD"), self._on_ncmd, qos=1)
        if commands:
            up.subscribe(node.topic("DCMD") + "/+", self._on_dcmd, qos=1)
        if self.primary_host is not None:
            up.subscribe(state_topic(self.primary_host), self._on_state, qos=1)

    # -- the encoder side ---------------------------------------------------------------------------
    def data_topic(self, asset_id: str) -> str:
        return self.node.topic("DDATA", asset_id)

    def wire(self, topic: str, body: bytes, replay: bool) -> tuple[str, bytes]:
        return self.node.wire(topic, body, replay=replay)

    def _publish_asset(self, asset: AssetRuntime, now_mono: float) -> int:
        reduced = self.reducers[asset.id].reduce(now_mono)
        if reduced is None:
            return 0
        if asset.id not in self._born and self.uplink.accepts_data:
            if asset.status.state != "connected":
                return 0  # a dead device's samples are all bad: its DDEATH said so, and it has no birth to refer to
            self._dbirth(asset)  # a device that came back (or first had data) is born before its data
        seq = self.delivery.next_seq()  # the spool's record number; Sparkplug's seq is stamped at send time
        self.seq = seq
        payload = self.node.data(asset.id, seq, time.time_ns() // 1_000_000, reduced)
        self.delivery.submit(seq, self.data_topic(asset.id), payload, samples=reduced.samples, qos=DATA_QOS)
        self.messages_published += 1
        return 1

    # -- the session -----------------------------------------------------------------------------------
    def use_link(self, link: Link) -> None:
        """Connected over ``link``: the profile applies; births now, or once the primary host is online."""
        super().use_link(link)
        self.node.use_profile(link.profile.reduce)
        self._born.clear()
        if self._host_online:
            self._births()
        else:
            self.uplink.hold = True
            log.info(
                "sparkplug %s: connected; waiting for primary host %s to be online before the births",
                self.name,
                self.primary_host,
            )

    def _births(self) -> None:
        """NBIRTH, a DBIRTH per asset that has data, then data may flow (the spool replays as historical)."""
        up = self.uplink
        up.publish(*self.node.nbirth(), qos=BIRTH_QOS)
        self.births += 1
        self._born.clear()
        for asset in self.assets.values():
            if asset.status.state == "connected" and asset.ring.head.any():
                self._dbirth(asset)
        up.hold = False

    def _dbirth(self, asset: AssetRuntime) -> None:
        snap = snapshot(asset.ring, self.reducers[asset.id].names, asset.meta.float32, asset.meta.integer)
        self.uplink.publish(*self.node.dbirth(asset.id, snap), qos=BIRTH_QOS)
        self._born.add(asset.id)

    def asset_state(self, asset: AssetRuntime) -> None:
        """DDEATH when the asset's device is lost (its DBIRTH comes with its first data when it returns)."""
        if asset.status.state != "connected" and asset.id in self._born:
            self._born.discard(asset.id)
            if self.uplink.accepts_data:
                self.uplink.publish(*self.node.ddeath(asset.id), qos=BIRTH_QOS)

    def publish_last(self, *, force: bool = False, first_only: bool = False) -> None:
        """Births carry every metric's value: no ``last`` message on a Sparkplug uplink."""

    def publish_metrics(self) -> None:
        """No JSON metrics on a Sparkplug uplink (the status API and the JSON uplinks have them)."""

    # -- messages from the host -------------------------------------------------------------------------
    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        state = parse_state(topic, payload)
        if state is None or state.timestamp < self._host_ts:
            return  # not a STATE message, or older than the one we know
        self._host_ts = state.timestamp
        was, self._host_online = self._host_online, state.online
        if state.online and not was:
            log.info("sparkplug %s: primary host %s online", self.name, self.primary_host)
            if self.uplink.connected:
                self._births()
        elif not state.online and was:
            log.warning(
                "sparkplug %s: primary host %s offline: closing this connection, data goes to the spool",
                self.name,
                self.primary_host,
            )
            self.uplink.hold = True
            self.uplink.drop_connection(f"primary host {self.primary_host} offline")

    def _on_ncmd(self, topic: str, payload: bytes, retained: bool) -> None:
        if self.node.parse_ncmd(payload) and self.uplink.connected and self._host_online:
            log.info("sparkplug %s: rebirth requested (NCMD)", self.name)
            self._births()

    def _on_dcmd(self, topic: str, payload: bytes, retained: bool) -> None:
        asset = self.node.device_of(topic)
        if asset is None:
            log.warning("sparkplug %s: DCMD for an unknown device on %s", self.name, safe(topic))
            return
        writes, errors = self.node.parse_dcmd(asset, payload)
        for text in errors:
            log.warning("sparkplug %s: DCMD %s refused: %s", self.name, safe(topic), safe(text))
        for w in writes:
            task = asyncio.get_running_loop().create_task(
                perform(self.assets, w.asset, w.tag, w.value, origin=f"sparkplug {topic}"), name="dcmd"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel DCMD writes still in flight."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
