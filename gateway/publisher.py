"""The publisher of one uplink: the one owner of that uplink's outgoing data.

It owns the schedule, one reducer per asset (each uplink has its own reduction profile and its own idea of
what was sent), the sequence numbers (persisted with the uplink's spool), the envelope (through the
uplink's encoder) and the latency figures. It hands each message to the uplink's delivery as an opaque
``(seq, topic, payload, samples)`` record; the delivery sends or spools it and, at send time, asks
:meth:`Publisher.wire` for the replay marking and the compression of the link in use.

When an asset's message is sent (docs/performance.md, "Latency"): an asset whose source delivers data no
more often than ``publish_interval`` (``poll``, or a subscription's ``publishing_interval``) is published
right after each poll or notification, so its samples wait for nothing; an asset polled faster has the
samples of several polls batched into one message per ``publish_interval`` (the timer), which keeps metered
links cheap. The timer also sends heartbeats.

The active link's profile (:class:`~gateway.uplink.links.Profile`: interval, reduction, compression, QoS,
payload shape, ``last`` and metrics intervals) applies from the moment that link is connected
(:meth:`use_link`).

Retained ``{namespace}/{asset}/last``: every tag's newest value, quality and time (full shape), published
when something changed, at most every ``last_interval``, and after every reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gateway.encoders.json import JsonEncoder
from gateway.reduce import Reducer, snapshot
from gateway.uplink.links import Link, Profile

if TYPE_CHECKING:
    from gateway.config.models import MqttSection
    from gateway.delivery import Delivery
    from gateway.source import AssetRuntime
    from gateway.uplink.mqtt import MqttUplink

log = logging.getLogger("gateway.publisher")


def source_interval(asset: AssetRuntime) -> float:
    """How often an asset's source delivers data: a subscription's publishing interval, else its poll."""
    return float(getattr(asset.source, "publishing_interval", None) or asset.source.poll)


class Publisher:
    """Data messages of every asset for one uplink (see the module docstring)."""

    def __init__(
        self,
        cfg: MqttSection,
        assets: dict[str, AssetRuntime],
        namespace: str,
        uplink: MqttUplink,
        delivery: Delivery,
        *,
        metrics: Callable[[], bytes] | None = None,
        metrics_topic: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.assets = assets
        self.namespace = namespace
        self.uplink = uplink
        self.delivery = delivery
        self._metrics = metrics
        self._metrics_topic = metrics_topic
        self.profile: Profile = uplink.links[0].profile
        self._encoders: dict[str, JsonEncoder] = {}
        self.reducers = {a.id: self._reducer(a) for a in assets.values()}
        self._last_publish = {a: float("-inf") for a in assets}
        self._after_batch: set[str] = set()
        for asset in assets.values():
            asset.batch_listeners.append(self._published_after_batch)
        self._plan_after_batch()
        #: seconds from a batch's read done to its message handed to the delivery, for assets published
        #: after their batches (the newest 4096; p50/p99 in stats)
        self.publish_latency: deque[float] = deque(maxlen=4096)
        self.seq = 0
        self.messages_published = 0
        self._last_sent: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._last_at = float("-inf")

    # -- assets (hot reload) ----------------------------------------------------------------------------
    def _reducer(self, asset: AssetRuntime) -> Reducer:
        """The asset's reducer under this uplink's profile (heartbeat, reduction defaults), with its tag metadata."""
        p = self.profile
        return Reducer(asset.tags, asset.ring, heartbeat=p.heartbeat, float32=asset.meta.float32, integer=asset.meta.integer,
                       profile=p.reduce)  # fmt: skip

    def add_asset(self, asset: AssetRuntime) -> None:
        """An asset added (or rebuilt) by a reload: its own reducer, after-batch publishing as configured."""
        self.reducers[asset.id] = self._reducer(asset)
        self._last_publish[asset.id] = float("-inf")
        self._last_sent.pop(asset.id, None)
        asset.batch_listeners.append(self._published_after_batch)
        self._plan_after_batch()

    def remove_asset(self, asset: AssetRuntime) -> None:
        """An asset removed (or about to be rebuilt) by a reload: what it produced is published first."""
        if asset.id in self.reducers:
            self._publish_asset(asset, time.monotonic())
            del self.reducers[asset.id]
        self._last_publish.pop(asset.id, None)
        self._last_sent.pop(asset.id, None)
        self._after_batch.discard(asset.id)

    # -- profile --------------------------------------------------------------------------------------
    def use_link(self, link: Link) -> None:
        """The uplink connected over ``link``: its profile applies from the next message on."""
        new = link.profile
        if new.reduce != self.profile.reduce or new.heartbeat != self.profile.heartbeat:
            for r in self.reducers.values():
                r.use_profile(new.reduce, new.heartbeat)
        changed = new != self.profile
        self.profile = new
        self._plan_after_batch()
        if changed:
            log.info(
                "uplink %s: link %s active, publishing every %gs, payload %s, compression %s, qos %d",
                self.name,
                link.name,
                new.publish_interval,
                new.payload,
                new.compression,
                new.qos,
            )
        self.publish_last(force=True)
        self.publish_metrics()

    def _plan_after_batch(self) -> None:
        interval = self.profile.publish_interval
        self._after_batch = {a.id for a in self.assets.values() if source_interval(a) >= interval}

    def encoder(self, shape: str | None = None) -> JsonEncoder:
        shape = shape or self.profile.payload
        enc = self._encoders.get(shape)
        if enc is None:
            enc = self._encoders[shape] = JsonEncoder(shape, round(self.cfg.compact_ts_tolerance * 1000))
        return enc

    def wire(self, topic: str, body: bytes, replay: bool) -> tuple[str, bytes]:
        """The delivery's send-time hook: replay marking and the active link's compression."""
        return self.encoder().wire(topic, body, replay=replay, compression=self.profile.compression)

    # -- messages -------------------------------------------------------------------------------------
    def data_topic(self, asset_id: str) -> str:
        return f"{self.namespace}/{asset_id}/data"

    def publish_once(self) -> int:
        """Reduce every asset's new samples into one message each and hand them to the delivery."""
        now = time.monotonic()
        return sum(self._publish_asset(asset, now) for asset in self.assets.values())

    def _publish_asset(self, asset: AssetRuntime, now_mono: float) -> int:
        """One asset's message, if anything is due: 1 when one was handed to the delivery, else 0."""
        reduced = self.reducers[asset.id].reduce(now_mono)
        if reduced is None:
            return 0
        self.seq = seq = self.delivery.next_seq()  # numbered before anything can lose it
        payload = self.encoder().data(asset.id, seq, time.time_ns() // 1_000_000, reduced)
        self.delivery.submit(seq, self.data_topic(asset.id), payload, samples=reduced.samples, qos=self.profile.qos)
        self.messages_published += 1
        link = self.uplink.active_link
        if link.exhausted and self.uplink.connected:
            link.budget_spooled += 1  # held back by the byte budget: spooled until it resets or another link
        return 1

    def _published_after_batch(self, asset: AssetRuntime) -> None:
        """A source wrote a batch: publish its asset now, unless it published less than half an interval
        ago (a device that suddenly streams faster than it was configured to falls back to the timer)."""
        if asset.id not in self._after_batch:
            return
        now = time.monotonic()
        last = self._last_publish[asset.id]
        if now - last >= 0.5 * self.profile.publish_interval:
            self._last_publish[asset.id] = now
            if self._publish_asset(asset, now) and last != float("-inf"):  # the first (cold) is not typical
                self.publish_latency.append(time.monotonic() - asset.read_done)

    def publish_last(self, *, force: bool = False, first_only: bool = False) -> None:
        """The retained ``last`` message of every asset whose values changed (all of them with ``force``; with
        ``first_only`` only of assets that never had one, which is not a refresh and keeps the interval)."""
        if self.profile.last_interval <= 0:
            return
        if not first_only:
            self._last_at = time.monotonic()
        enc = self.encoder("full")
        now_ms = time.time_ns() // 1_000_000
        for asset in self.assets.values():
            if first_only and asset.id in self._last_sent:
                continue
            snap = snapshot(asset.ring, self.reducers[asset.id].names, asset.meta.float32, asset.meta.integer)
            if not len(snap):
                continue
            key = (snap.rows, snap.values, snap.quality)
            old = self._last_sent.get(asset.id)
            if not force and old is not None and _same(old, key) and not snap.strings:
                continue
            self._last_sent[asset.id] = key
            self.uplink.publish(
                f"{self.namespace}/{asset.id}/last", enc.full(asset.id, None, now_ms, snap), qos=1, retain=True
            )

    def asset_state(self, asset: AssetRuntime) -> None:
        """An asset's state changed: the retained ``{namespace}/{asset}/status`` (the uplink keeps it and says it
        again after every reconnect)."""
        self.uplink.publish(f"{self.namespace}/{asset.id}/status", asset.status.state, qos=1, retain=True)

    def detach(self) -> None:
        """Stop being told of the assets' batches (the uplink is stopping, e.g. for a reload)."""
        for asset in self.assets.values():
            if self._published_after_batch in asset.batch_listeners:
                asset.batch_listeners.remove(self._published_after_batch)
        self._after_batch.clear()

    async def close(self) -> None:
        """Nothing of its own to stop (the Sparkplug publisher has command tasks)."""

    def publish_metrics(self) -> None:
        if self._metrics is not None and self._metrics_topic is not None and self.uplink.connected:
            self.uplink.publish(self._metrics_topic, self._metrics(), qos=1, retain=True)

    # -- the task ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        """The timer: batched assets every ``publish_interval``, heartbeats, ``last``, metrics."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.profile.publish_interval
        next_metrics = loop.time() + self.profile.metrics_interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            interval = self.profile.publish_interval
            next_at += interval
            if next_at < loop.time():
                next_at = loop.time() + interval
            now = time.monotonic()
            for asset in self.assets.values():
                # assets published after their batches need the timer only when no batch came for an
                # interval (heartbeats, a device gone)
                if asset.id not in self._after_batch or now - self._last_publish[asset.id] >= interval:
                    self._publish_asset(asset, now)
            if self.profile.last_interval > 0:
                if now - self._last_at >= self.profile.last_interval:
                    self.publish_last()
                elif len(self._last_sent) < len(self.assets):  # an asset's first ``last`` as soon as it has data
                    self.publish_last(first_only=True)
            if loop.time() >= next_metrics:
                next_metrics = loop.time() + self.profile.metrics_interval
                self.publish_metrics()

    # -- status ---------------------------------------------------------------------------------------
    def latency_summary(self) -> dict[str, Any]:
        """Read done -> message handed to the delivery, for assets published after each batch (ms)."""
        xs = sorted(self.publish_latency)
        if not xs:
            return {"n": 0}

        def pick(q: float) -> float:
            return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 3)

        return {"n": len(xs), "p50": pick(0.5), "p99": pick(0.99), "max": round(xs[-1] * 1000, 3)}


def _same(a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]) -> bool:
    return (
        a[0].shape == b[0].shape
        and bool((a[0] == b[0]).all())
        and bool((a[2] == b[2]).all())
        and bool(np.array_equal(a[1], b[1], equal_nan=True))
    )
