"""Prometheus exposition of the gateway's own counters (``GET /metrics``).

A custom collector reads the counters that already exist (each asset's :class:`~gateway.status.AssetStatus`,
:meth:`Gateway.gateway_status` for uplinks, links and spools) at scrape time; there is no second set of
counters to keep in step. Names carry the ``iiot_gateway_`` prefix, values are in base units (seconds,
bytes), counters end in ``_total``; labels are ``asset``, ``uplink``, ``link`` (and ``reason`` for drops).

A scrape must never fail because one figure is missing or odd: a value that is absent or not a number is left
out of its family, the rest is still served. ``prometheus_client`` is imported here only, and the API imports
this module on the first scrape, so a gateway nobody scrapes never loads it.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from gateway import __version__

if TYPE_CHECKING:
    from gateway.engine import Gateway
    from gateway.looplag import LoopLag

P = "iiot_gateway_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def _num(d: Any, key: str) -> float | None:
    """``d[key]`` as a float, or None when missing or not a number (bools count as 0/1)."""
    v = d.get(key) if isinstance(d, dict) else None
    if isinstance(v, bool):
        return float(v)
    return float(v) if isinstance(v, (int, float)) else None


class _Families:
    """Builds each family once per scrape; ``add`` skips values that are None."""

    def __init__(self) -> None:
        self._f: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

    def add(self, kind: str, name: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        if value is None:
            return
        fam = self._f.get(name)
        if fam is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = self._f[name] = cls(P + name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), value)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._f.values())


# (metric name, AssetStatus attribute, help)
_SOURCE_COUNTERS = (
    ("source_polls", "polls", "Successful polls"),
    ("source_poll_errors", "poll_errors", "Polls that failed as a whole (timeout, connection lost)"),
    ("source_tag_errors", "tag_errors", "Bad tag readings inside successful polls"),
    ("source_connect_failures", "connect_failures", "Failed connection attempts to the device"),
    ("source_reconnects", "reconnects", "Reconnections after a lost connection"),
    ("source_overruns", "overruns", "Poll slots skipped because a poll took longer than the interval"),
)

# uplink stats key -> (metric name, help)
_UPLINK_COUNTERS = (
    ("reconnects", "uplink_reconnects", "Reconnections of the uplink after an outage"),
    ("link_switches", "uplink_link_switches", "Switches from one link to another (failover, failback)"),
    ("connect_failures", "uplink_connect_failures", "Failed connection attempts over any link"),
    ("messages_published", "uplink_messages_published", "Data messages made by the uplink's publisher"),
    ("dropped", "uplink_own_messages_dropped", "Status/metrics messages dropped while disconnected"),
)
_LINK_COUNTERS = (
    ("bytes_sent", "link_sent_bytes", "Bytes sent over the link (MQTT packets)"),
    ("messages_sent", "link_messages_sent", "Messages sent over the link"),
    ("connects", "link_connects", "Successful connections over the link"),
    ("connect_failures", "link_connect_failures", "Failed connection attempts over the link"),
)
_SPOOL_COUNTERS = (
    ("delivered", "spool_delivered_messages", "Data messages acknowledged by the broker"),
    ("replayed", "spool_replayed_messages", "Spooled messages sent again after an outage"),
    ("lost_messages", "spool_lost_messages", "Messages in spool segments found lost or unreadable"),
    ("damaged_records", "spool_damaged_records", "Damaged spool records skipped on replay"),
)


class GatewayCollector:
    """``prometheus_client`` collector over one running :class:`~gateway.engine.Gateway` (event-loop thread)."""

    def __init__(self, gw: Gateway, lag: LoopLag | None = None) -> None:
        self.gw = gw
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        gw = self.gw
        info = InfoMetricFamily(P + "build", "Version of the gateway and of Python")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info
        f = _Families()
        f.add("gauge", "start_time_seconds", "Unix time the gateway started", {}, float(gw.started_at))
        if self.lag is not None:
            f.add("gauge", "event_loop_lag_seconds", "How late the newest timed sleep woke up", {}, self.lag.last)
            f.add("gauge", "event_loop_lag_max_seconds", "Largest event-loop lag of the last minute", {},
                  self.lag.max())
        self._sources(f)
        status = gw.gateway_status()
        uplinks = status.get("uplinks") if isinstance(status, dict) else None
        for name, up in (uplinks or {}).items():
            self._uplink(f, str(name), up)
        yield from f

    def _sources(self, f: _Families) -> None:
        now = time.time()
        for asset_id, a in self.gw.assets.items():
            s = a.status
            lab = {"asset": asset_id}
            f.add("gauge", "source_up", "1 when the asset's device is connected, else 0", lab,
                  1.0 if s.state == "connected" else 0.0)
            for name, attr, doc in _SOURCE_COUNTERS:
                f.add("counter", name, doc, lab, float(getattr(s, attr)))
            f.add("gauge", "source_poll_duration_seconds", "Duration of the last successful poll", lab,
                  s.latency_last)
            f.add("gauge", "source_poll_duration_median_seconds", "Median duration of the last 256 polls", lab,
                  s.latency_p50)
            f.add("gauge", "source_last_poll_age_seconds", "Seconds since the last successful poll", lab,
                  None if s.last_poll_ok is None else max(0.0, now - s.last_poll_ok))
            f.add("gauge", "source_tags", "Configured tags of the asset", lab, float(len(a.tags)))

    @staticmethod
    def _uplink(f: _Families, name: str, up: Any) -> None:
        lab = {"uplink": name}
        f.add("gauge", "uplink_connected", "1 when the uplink's broker is connected", lab, _num(up, "connected"))
        f.add("gauge", "uplink_inflight_messages", "Messages sent and not yet acknowledged", lab, _num(up, "inflight"))
        for key, metric, doc in _UPLINK_COUNTERS:
            f.add("counter", metric, doc, lab, _num(up, key))
        links = up.get("links") if isinstance(up, dict) else None
        for link_name, link in (links or {}).items():
            ll = {"uplink": name, "link": str(link_name)}
            f.add("gauge", "link_connected", "1 when this link carries the uplink's connection", ll,
                  _num(link, "connected"))
            f.add("gauge", "link_active", "1 for the link in use (or being tried)", ll, _num(link, "active"))
            for key, metric, doc in _LINK_COUNTERS:
                f.add("counter", metric, doc, ll, _num(link, key))
            f.add("gauge", "link_budget_today_bytes", "Bytes counted against today's budget", ll,
                  _num(link, "bytes_today"))
            f.add("gauge", "link_budget_limit_bytes", "The link's max_bytes_per_day (absent when unlimited)", ll,
                  _num(link, "max_bytes_per_day"))
            f.add("gauge", "link_budget_exhausted", "1 when today's budget is spent", ll,
                  _num(link, "budget_exhausted"))
        spool = up.get("spool") if isinstance(up, dict) else None
        if not isinstance(spool, dict):
            return
        f.add("gauge", "spool_bytes", "Bytes held in the spool", lab, _num(spool, "bytes"))
        f.add("gauge", "spool_messages", "Messages held in the spool", lab, _num(spool, "messages"))
        f.add("gauge", "spool_limit_bytes", "The spool's max_bytes", lab, _num(spool, "max_bytes"))
        age = _num(spool, "oldest_age_s")
        f.add("gauge", "spool_oldest_age_seconds", "Age of the oldest spooled message (0 when empty)", lab,
              0.0 if age is None else age)
        for key, metric, doc in _SPOOL_COUNTERS:
            f.add("counter", metric, doc, lab, _num(spool, key))
        reasons = spool.get("dropped_by_reason")
        for reason, counts in (reasons if isinstance(reasons, dict) else {}).items():
            rl = {"uplink": name, "reason": str(reason)}
            f.add("counter", "spool_dropped_messages", "Messages dropped by the spool, by reason", rl,
                  _num(counts, "messages"))
            f.add("counter", "spool_dropped_samples", "Samples in dropped messages, by reason", rl,
                  _num(counts, "samples"))


def render(gw: Gateway, lag: LoopLag | None = None) -> bytes:
    """The Prometheus text exposition of ``gw`` now (call on the event loop)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gw, lag))
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "GatewayCollector", "render"]
