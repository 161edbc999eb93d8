"""Runtime status of one asset: what the status API and the MQTT status topic show."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(slots=True)
class AssetStatus:
    state: str = "connecting"  # connecting | connected | disconnected | stopped
    state_since: float = field(default_factory=time.time)
    last_poll_ok: float | None = None  # epoch seconds of the last successful poll
    latency_last: float | None = None  # seconds
    latencies: deque = field(default_factory=lambda: deque(maxlen=256))
    polls: int = 0  # successful polls
    poll_errors: int = 0  # polls that failed as a whole (timeout, connection lost)
    tag_errors: int = 0  # bad tag readings inside successful polls
    connect_failures: int = 0
    reconnects: int = 0
    overruns: int = 0  # poll slots skipped because a poll took longer than the interval
    last_error: str | None = None
    last_error_at: float | None = None

    def counters(self) -> dict[str, Any]:
        """Poll timing (ms) and counters as the status API and the dashboard's events show them."""
        return {
            "latency_ms_last": _ms(self.latency_last),
            "latency_ms_p50": _ms(self.latency_p50),
            "polls": self.polls,
            "poll_errors": self.poll_errors,
            "tag_errors": self.tag_errors,
            "connect_failures": self.connect_failures,
            "reconnects": self.reconnects,
            "overruns": self.overruns,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    def record_poll(self, latency: float, bad_tags: int) -> None:
        self.polls += 1
        self.tag_errors += bad_tags
        self.latency_last = latency
        self.latencies.append(latency)
        self.last_poll_ok = time.time()

    def record_error(self, text: str) -> None:
        self.last_error = text
        self.last_error_at = time.time()

    def set_state(self, state: str) -> bool:
        """Change state; True when it actually changed."""
        if state == self.state:
            return False
        self.state = state
        self.state_since = time.time()
        return True

    @property
    def latency_p50(self) -> float | None:
        return float(np.median(np.fromiter(self.latencies, dtype=np.float64))) if self.latencies else None


class Backoff:
    """Capped exponential backoff with jitter: 1 s, 2 s, 4 s ... up to ``cap``, each drawn ±20 %.

    The jitter is applied to every delay :meth:`next` returns, after ``limit``: sources that failed together
    (two slaves on one bus, every asset of a switched-off PLC) must not retry in lockstep.
    """

    JITTER = 0.2

    def __init__(self, cap: float, initial: float = 1.0) -> None:
        self.cap = cap
        self.initial = min(initial, cap)
        self._next = self.initial

    def next(self, limit: float | None = None) -> float:
        """The next delay in seconds (at most ``limit`` before jitter, when given), then double it."""
        delay = self._next if limit is None else min(self._next, limit)
        self._next = min(self._next * 2, self.cap)
        return delay * float(np.random.uniform(1 - self.JITTER, 1 + self.JITTER))

    def reset(self) -> None:
        self._next = self.initial
