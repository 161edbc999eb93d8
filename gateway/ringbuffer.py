"""Per-source sample history: preallocated NumPy columns, one ring per tag, single writer.

Layout: three 2-D arrays of shape ``(n_tags, capacity)`` — ``ts`` int64 (epoch ns), ``values`` float64,
``quality`` uint8 — so a sample costs 17 bytes and no Python object. ``head[i]`` counts every sample ever
written to tag ``i``; its newest sample sits at ``(head[i] - 1) % capacity``. A batch (all tags of a poll
or any subset from a subscription) is written with one fancy-indexed assignment per column.

Strings are the one exception: only the last value of a string tag is kept (``last_string``).

Only the source task writes; the publisher and the API read. All of them run on the one event loop,
so reads never see a half-written batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.batch import Batch, Quality

BYTES_PER_SAMPLE = 8 + 8 + 1


@dataclass(slots=True)
class Window:
    """Samples of one tag in time order."""

    ts: np.ndarray
    values: np.ndarray
    quality: np.ndarray


class RingBuffer:
    def __init__(self, n_tags: int, capacity: int) -> None:
        if n_tags < 1 or capacity < 2:
            raise ValueError("a ring buffer needs at least one tag and two slots")
        self.n_tags = n_tags
        self.capacity = capacity
        self.ts = np.zeros((n_tags, capacity), dtype=np.int64)
        self.values = np.full((n_tags, capacity), np.nan, dtype=np.float64)
        self.quality = np.full((n_tags, capacity), Quality.BAD, dtype=np.uint8)
        self.head = np.zeros(n_tags, dtype=np.int64)
        self.last_error = np.zeros(n_tags, dtype=np.int32)
        self.error_text: dict[int, str] = {}
        self.last_string: list[str | None] = [None] * n_tags
        self.is_string = np.zeros(n_tags, dtype=bool)
        self._rows = np.arange(n_tags)

    @classmethod
    def for_rate(cls, n_tags: int, seconds: float, interval: float, *, minimum: int = 16) -> "RingBuffer":
        """A buffer that holds ``seconds`` of history for a tag sampled every ``interval`` seconds."""
        return cls(n_tags, max(minimum, int(np.ceil(seconds / interval)) + 1))

    @property
    def nbytes(self) -> int:
        return self.ts.nbytes + self.values.nbytes + self.quality.nbytes

    def write(self, batch: Batch) -> None:
        """Append one batch. ``batch.index`` must not name a tag twice (split such batches first)."""
        rows = self._rows if batch.index is None else batch.index
        head = self.head[rows]
        slot = head % self.capacity
        self.ts[rows, slot] = batch.ts
        self.values[rows, slot] = batch.values
        self.quality[rows, slot] = batch.quality
        self.last_error[rows] = batch.errors
        self.head[rows] = head + 1
        if batch.error_text:
            self.error_text.update(batch.error_text)
        for pos, text in batch.strings.items():
            tag = pos if batch.index is None else int(batch.index[pos])
            self.last_string[tag] = text
            self.is_string[tag] = True

    def last(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Newest ``(ts, values, quality, has_sample)`` of every tag, O(n_tags)."""
        slot = (self.head - 1) % self.capacity
        has = self.head > 0
        return self.ts[self._rows, slot], self.values[self._rows, slot], self.quality[self._rows, slot], has

    def pending(self, rows: np.ndarray, cursor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Samples written to tags ``rows`` after ``cursor[rows]`` (a ``head`` value saved earlier), oldest first.

        Returns ``(ts, values, quality, count)`` where the first three have shape ``(len(rows), k)``, ``k``
        the largest count; entries at column ``j >= count[r]`` are padding (quality BAD, value NaN).
        Samples overwritten since the cursor are gone: ``count`` is capped at the capacity.
        """
        head = self.head[rows]
        count = np.minimum(head - cursor[rows], self.capacity)
        k = int(count.max(initial=0))
        if k == 0:
            empty = np.empty((len(rows), 0))
            return empty.astype(np.int64), empty, empty.astype(np.uint8), count
        cols = np.arange(k)
        start = head - count
        slot = (start[:, None] + cols[None, :]) % self.capacity
        r = rows[:, None]
        valid = cols[None, :] < count[:, None]
        values = np.where(valid, self.values[r, slot], np.nan)
        quality = np.where(valid, self.quality[r, slot], Quality.BAD).astype(np.uint8)
        ts = np.where(valid, self.ts[r, slot], 0)
        return ts, values, quality, count

    def window(self, tag: int, since_ns: int) -> Window:
        """Samples of one tag with ``ts >= since_ns``, oldest first."""
        head = int(self.head[tag])
        n = min(head, self.capacity)
        slot = (head - n + np.arange(n)) % self.capacity
        ts = self.ts[tag, slot]
        start = int(np.searchsorted(ts, since_ns, side="left"))
        sel = slot[start:]
        return Window(self.ts[tag, sel], self.values[tag, sel], self.quality[tag, sel])
