"""Per-source sample history: preallocated NumPy columns, one ring per tag, single writer.

Layout: three 2-D arrays indexed ``[tag, slot]`` — ``ts`` int64 (epoch ns), ``values`` float64, ``quality``
uint8 — so a sample costs 17 bytes and no Python object. They are transposed views of slot-major storage
(one contiguous row of all tags per slot): a poll writes one contiguous row, the newest ``k`` slots of all
tags are one contiguous block, and the memory is zero-filled on demand by the OS, so it becomes resident
as slots are first written (a 600 s ring is fully resident after 600 s). Slots never written hold zeros:
readers go by ``head`` (``has_sample``, ``count``), never by the content of unwritten slots. ``head[i]`` counts every sample ever
written to tag ``i``; its newest sample sits at ``(head[i] - 1) % capacity``. A batch (all tags of a poll
or any subset from a subscription) is written with one fancy-indexed assignment per column.

Strings are the one exception: only the last value of a string tag is kept (``last_string``).

Only the source task writes; the publisher and the API read. All of them run on the one event loop,
so reads never see a half-written batch.
"""

from __future__ import annotations

import mmap
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
        # the three columns in one block of anonymous memory mapped from the OS: its pages are zero and become
        # resident only as slots are first written. Not np.zeros: calloc serves a block below glibc's mmap
        # threshold from the heap, which after start-up's config peak (the threshold grows when large blocks
        # are freed) may be pages already resident, or zeroed by touching them all.
        cells = capacity * n_tags
        block = np.frombuffer(mmap.mmap(-1, cells * BYTES_PER_SAMPLE), dtype=np.uint8)
        self.ts = block[: 8 * cells].view(np.int64).reshape(capacity, n_tags).T
        self.values = block[8 * cells : 16 * cells].view(np.float64).reshape(capacity, n_tags).T
        self.quality = block[16 * cells :].reshape(capacity, n_tags).T
        self.head = np.zeros(n_tags, dtype=np.int64)
        self.last_error = np.zeros(n_tags, dtype=np.int32)
        self.error_text: dict[int, str] = {}
        self.last_string: list[str | None] = [None] * n_tags
        self.is_string = np.zeros(n_tags, dtype=bool)
        self._rows = np.arange(n_tags)
        #: every tag has the same ``head`` (true for polled sources): a full batch is one column write
        self._uniform = True

    @classmethod
    def for_rate(cls, n_tags: int, seconds: float, interval: float, *, minimum: int = 16) -> "RingBuffer":
        """A buffer that holds ``seconds`` of history for a tag sampled every ``interval`` seconds."""
        return cls(n_tags, max(minimum, int(np.ceil(seconds / interval)) + 1))

    @property
    def nbytes(self) -> int:
        return self.ts.nbytes + self.values.nbytes + self.quality.nbytes

    def write(self, batch: Batch) -> None:
        """Append one batch. ``batch.index`` must not name a tag twice (split such batches first)."""
        if batch.index is None and self._uniform:  # a full poll and every tag at the same count: one column
            slot = int(self.head[0]) % self.capacity
            self.ts[:, slot] = batch.ts
            self.values[:, slot] = batch.values
            self.quality[:, slot] = batch.quality
            self.last_error[:] = batch.errors
            self.head += 1
        else:
            self._write_rows(batch)
        if batch.error_text:
            self.error_text.update(batch.error_text)
        for pos, text in batch.strings.items():
            tag = pos if batch.index is None else int(batch.index[pos])
            self.last_string[tag] = text
            self.is_string[tag] = True

    def _write_rows(self, batch: Batch) -> None:
        rows = self._rows if batch.index is None else batch.index
        head = self.head[rows]
        slot = head % self.capacity
        self.ts[rows, slot] = batch.ts
        self.values[rows, slot] = batch.values
        self.quality[rows, slot] = batch.quality
        self.last_error[rows] = batch.errors
        self.head[rows] = head + 1
        self._uniform = bool((self.head == self.head[0]).all())

    def last(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Newest ``(ts, values, quality, has_sample)`` of every tag, O(n_tags)."""
        has = self.head > 0
        if self._uniform:
            col = int(self.head[0] - 1) % self.capacity
            return self.ts[:, col].copy(), self.values[:, col].copy(), self.quality[:, col].copy(), has
        slot = (self.head - 1) % self.capacity
        return self.ts[self._rows, slot], self.values[self._rows, slot], self.quality[self._rows, slot], has

    def pending(
        self, rows: np.ndarray, cursor: np.ndarray, *, copy: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Samples written to tags ``rows`` after ``cursor[rows]`` (a ``head`` value saved earlier), oldest first.

        Returns ``(ts, values, quality, count)`` where the first three have shape ``(len(rows), k)``, ``k``
        the largest count; entries at column ``j >= count[r]`` are padding (quality BAD, value NaN).
        Samples overwritten since the cursor are gone: ``count`` is capped at the capacity.
        ``copy=False``: when every tag has the same ``k`` new samples in slots that do not wrap around, views
        of the ring (read them before the next write), else copies as usual.
        """
        head = self.head[rows]
        count = np.minimum(head - cursor[rows], self.capacity)
        k = int(count.max(initial=0))
        if k == 0:
            empty = np.empty((len(rows), 0))
            return empty.astype(np.int64), empty, empty.astype(np.uint8), count
        if self._uniform and (count == k).all():  # the usual case: the same columns for every row
            first = (int(head[0]) - k) % self.capacity
            full = len(rows) == self.n_tags
            if full and not copy and first + k <= self.capacity:
                block = slice(first, first + k)
                return self.ts[:, block], self.values[:, block], self.quality[:, block], count
            cols = (first + np.arange(k)) % self.capacity
            pick = (lambda a: a[:, cols]) if full else (lambda a: a[rows[:, None], cols[None, :]])
            return pick(self.ts), pick(self.values), pick(self.quality), count
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
