"""The links of an uplink: resolved settings, the profile that applies while a link is active, counters and
the daily byte budget.

A link is one route to the uplink's broker (``links:``; or the one link ``default`` of ``host``/``port``).
Every setting a link leaves unset is the uplink's. Bytes are counted per PUBLISH packet as it goes on the
wire (fixed header, topic, packet id, payload: :func:`publish_size`); TCP/IP and TLS overhead is not.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config.common import ReduceProfile
    from gateway.config.models import LinkSection, MqttSection, TlsSection

log = logging.getLogger("gateway.uplink")

_PROFILE_KEYS = ("publish_interval", "reduce", "compression", "qos", "payload", "last_interval", "metrics_interval")


def publish_size(topic: str, payload_len: int, qos: int) -> int:
    """Bytes of one MQTT 3.1.1 PUBLISH packet: fixed header, remaining-length varint, topic, packet id, payload."""
    rem = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    n = 1
    while rem >= 128**n:
        n += 1
    return 1 + n + rem


@dataclass(frozen=True, slots=True)
class Profile:
    """What the publisher does while a link is active (the uplink's values, overridden by the link's)."""

    publish_interval: float
    heartbeat: float
    reduce: ReduceProfile | None
    compression: str
    qos: int
    payload: str
    last_interval: float
    metrics_interval: float


class Link:
    """One route to the broker, its counters and its byte budget (loop thread only)."""

    def __init__(self, up: MqttSection, cfg: LinkSection | None, state_dir: Path | None) -> None:
        self.name: str = cfg.name if cfg is not None else "default"
        src: Any = cfg if cfg is not None else up
        self.host: str = src.host
        self.port: int = src.port
        self.bind_address: str | None = getattr(cfg, "bind_address", None)
        self.bind_interface: str | None = getattr(cfg, "bind_interface", None)
        self.tls: TlsSection | None = cfg.tls if cfg is not None and cfg.tls is not None else up.tls
        self.username: str | None = cfg.username if cfg is not None and cfg.username is not None else up.username
        pw = cfg.password if cfg is not None and cfg.password is not None else up.password
        self.password: str | None = pw.get_secret_value() if pw is not None else None
        self.keepalive: float = cfg.keepalive if cfg is not None and cfg.keepalive is not None else up.keepalive
        self.metered: bool = bool(getattr(cfg, "metered", False))
        self.max_bytes_per_day: int | None = getattr(cfg, "max_bytes_per_day", None)
        over = {k: getattr(cfg, k) for k in _PROFILE_KEYS if cfg is not None and getattr(cfg, k) is not None}
        self.profile = Profile(
            publish_interval=over.get("publish_interval", up.publish_interval),
            heartbeat=up.heartbeat,
            reduce=over.get("reduce", up.reduce),
            compression=over.get("compression", up.compression),
            qos=over.get("qos", up.qos),
            payload=over.get("payload", up.payload),
            last_interval=over.get("last_interval", up.last_interval),
            metrics_interval=over.get("metrics_interval", up.metrics_interval),
        )
        self.where = f"{self.host}:{self.port}"
        self.connected = False
        self.bytes_sent = 0
        self.messages_sent = 0
        self.connects = 0
        self.failures = 0
        self.last_error: str | None = None
        self.reachable_since: float | None = None  # failback probes: monotonic time of the first good probe
        self.budget_spooled = 0  # data messages held back because the budget was spent
        self._budget_file = state_dir / f"budget-{self.name}.json" if state_dir is not None else None
        self._day = self._today()
        self._today_bytes = 0
        self._saved_bytes = 0
        self.exhausted = False
        self._load_budget()

    # ------------------------------------------------------------------------------------------- counters

    def count(self, topic: str, payload_len: int, qos: int) -> None:
        """One PUBLISH packet went out on this link."""
        self.messages_sent += 1
        self.count_bytes(publish_size(topic, payload_len, qos))

    def count_bytes(self, n: int) -> None:
        """``n`` bytes of MQTT packets went over this link."""
        self.bytes_sent += n
        self._today_bytes += n
        if self.max_bytes_per_day is not None and not self.exhausted and self._today_bytes >= self.max_bytes_per_day:
            self.exhausted = True
            log.warning(
                "link %s: daily byte budget of %d bytes spent (max_bytes_per_day); data goes to the "
                "spool until midnight or a better link returns (statuses are still sent)",
                self.name,
                self.max_bytes_per_day,
            )

    def roll_day(self) -> bool:
        """At local midnight the budget starts again: True when that just opened a spent budget."""
        today = self._today()
        if today == self._day:
            return False
        self._day, self._today_bytes = today, 0
        was, self.exhausted = self.exhausted, False
        if was:
            log.info("link %s: new day, the byte budget is available again", self.name)
        return was

    @property
    def budget_left(self) -> int | None:
        if self.max_bytes_per_day is None:
            return None
        return max(0, self.max_bytes_per_day - self._today_bytes)

    def stats(self, active: bool) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "active": active,
            "connected": self.connected,
            "metered": self.metered,
            "bytes_sent": self.bytes_sent,
            "messages_sent": self.messages_sent,
            "connects": self.connects,
            "connect_failures": self.failures,
            "last_error": self.last_error,
            "bytes_today": self._today_bytes,
            "max_bytes_per_day": self.max_bytes_per_day,
            "budget_left": self.budget_left,
            "budget_exhausted": self.exhausted,
            "budget_spooled": self.budget_spooled,
            "payload": self.profile.payload,
            "compression": self.profile.compression,
            "publish_interval_s": self.profile.publish_interval,
        }

    # ----------------------------------------------------------------------------------- budget on disk

    @staticmethod
    def _today() -> str:
        return dt.date.today().isoformat()

    def _load_budget(self) -> None:
        """A restart does not give a spent budget back: today's bytes are kept in the uplink's state dir."""
        if self._budget_file is None or self.max_bytes_per_day is None:
            return
        with contextlib.suppress(OSError, ValueError, TypeError):
            state = json.loads(self._budget_file.read_text())
            if state.get("day") == self._day:
                self._today_bytes = self._saved_bytes = int(state["bytes"])
                self.exhausted = self._today_bytes >= self.max_bytes_per_day

    def budget_to_save(self) -> tuple[Path, str] | None:
        """(file, text) to write when today's count changed since the last save (written off the loop)."""
        if self._budget_file is None or self.max_bytes_per_day is None or self._today_bytes == self._saved_bytes:
            return None
        self._saved_bytes = self._today_bytes
        return self._budget_file, json.dumps({"day": self._day, "bytes": self._today_bytes})


def save_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (worker thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def resolve_links(up: MqttSection, state_dir: Path | None) -> list[Link]:
    """The uplink's links in order of preference."""
    if up.links:
        return [Link(up, cfg, state_dir) for cfg in up.links]
    return [Link(up, None, state_dir)]
