"""Event-loop lag, measured by a task that sleeps and notes how late it woke up."""

from __future__ import annotations

import asyncio
from collections import deque


class LoopLag:
    """Event-loop lag: a task asks to sleep ``interval`` seconds and measures how much later it woke up.

    A handler or driver that blocks the loop shows up here as lag (it delays every poll, publish and API
    answer). :attr:`last` is the newest measurement, :meth:`max` the largest of the last ``window`` ones.
    """

    def __init__(self, interval: float = 0.5, window: int = 120) -> None:
        self.interval = interval
        self.last: float | None = None
        self._recent: deque[float] = deque(maxlen=window)

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.record(loop.time() - start - self.interval)

    def record(self, lag: float) -> None:
        self.last = max(0.0, lag)
        self._recent.append(self.last)

    def max(self) -> float | None:
        return max(self._recent) if self._recent else None
