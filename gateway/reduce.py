"""Reduction per publish interval: what of the ring buffer goes into the next message of an asset.

Per tag, vectorised over all tags of an asset:

- report by exception (``mode: rbe``, the default): the newest value is sent when it moved more than
  ``deadband`` from the value last sent (any change when ``deadband`` is 0), when its quality changed, or
  when ``heartbeat`` has passed since it was last sent;
- ``aggregate: [min, max, mean, count]``: the newest value plus aggregates over the good samples that
  arrived since the last publish, sent every interval that has new samples (``n`` = samples aggregated);
- ``mode: raw``: every sample of the window as arrays, sent every interval that has new samples.

String tags (kept as last value only) are sent when the text or quality changes, or on heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gateway.batch import QUALITY_NAMES, Quality
from gateway.config.common import TagBase
from gateway.ringbuffer import RingBuffer

_NS_PER_MS = 1_000_000


@dataclass(slots=True)
class _Sent:
    value: np.ndarray
    quality: np.ndarray
    at: np.ndarray  # monotonic seconds of the last send, -inf when never
    string: list[str | None]


def json_number(x: float) -> float | None:
    """Shortest faithful JSON number: drop float64 noise such as 45.100000000000001 from scaling."""
    if x != x:  # NaN
        return None
    if abs(x) < 1e15:
        return float("%.15g" % x)
    return x


def json_value(x: float, float32: bool) -> float | None:
    """One value as published: float32 tags at float32 precision, others via :func:`json_number`."""
    if float32 and x == x:
        return float(str(np.float32(x)))
    return json_number(x)


class Reducer:
    """Decides, per publish interval, which tags of one asset are sent and with what."""

    def __init__(
        self,
        tags: Sequence[TagBase],
        ring: RingBuffer,
        *,
        heartbeat: float,
        float32: np.ndarray | None = None,
    ) -> None:
        n = len(tags)
        self.names = [t.name for t in tags]
        self.ring = ring
        self.deadband = np.array([t.deadband for t in tags], dtype=np.float64)
        self.heartbeat = np.array([t.heartbeat if t.heartbeat is not None else heartbeat for t in tags])
        aggs = [set(t.aggregate) for t in tags]
        self.agg_rows = np.flatnonzero([bool(a) for a in aggs])
        self.want = {k: np.array([k in a for a in aggs], dtype=bool) for k in ("min", "max", "mean", "count")}
        self.raw = np.array([t.mode == "raw" for t in tags], dtype=bool)
        self.raw_rows = np.flatnonzero(self.raw)
        self.always_on_new = self.raw | np.array([bool(a) for a in aggs], dtype=bool)
        self.float32 = np.zeros(n, dtype=bool) if float32 is None else float32.astype(bool)
        self.cursor = np.zeros(n, dtype=np.int64)
        self.sent = _Sent(
            value=np.full(n, np.nan),
            quality=np.full(n, 255, dtype=np.uint8),
            at=np.full(n, -np.inf),
            string=[None] * n,
        )

    def reduce(self, now: float) -> dict[str, dict[str, Any]]:
        """The ``tags`` object of the next message (empty when nothing is due). ``now``: monotonic seconds."""
        ring = self.ring
        ts, v, q, has = ring.last()
        new = ring.head > self.cursor
        sent = self.sent

        moved = np.abs(v - sent.value)
        value_changed = np.where(self.deadband > 0, moved > self.deadband, v != sent.value)
        nan_changed = np.isnan(v) != np.isnan(sent.value)
        value_changed = (value_changed & ~np.isnan(moved)) | nan_changed
        strings_changed = self._strings_changed(new)
        due = new & (value_changed | (q != sent.quality) | self.always_on_new | strings_changed)
        due |= has & (now - sent.at >= self.heartbeat)

        rows = np.flatnonzero(due)
        out: dict[str, dict[str, Any]] = {}
        if len(rows):
            out = self._entries(rows, ts, v, q, new)
            sent.value[rows] = v[rows]
            sent.quality[rows] = q[rows]
            sent.at[rows] = now
            for i in rows[ring.is_string[rows]].tolist():
                sent.string[i] = ring.last_string[i]
        self.cursor[:] = ring.head
        return out

    def _strings_changed(self, new: np.ndarray) -> np.ndarray:
        changed = np.zeros(len(new), dtype=bool)
        last = self.ring.last_string
        for i in np.flatnonzero(new & self.ring.is_string).tolist():
            if last[i] is not None and last[i] != self.sent.string[i]:
                changed[i] = True
        return changed

    def _entries(self, rows: np.ndarray, ts: np.ndarray, v: np.ndarray, q: np.ndarray, new: np.ndarray):
        ring = self.ring
        vals = v[rows]
        f32 = self.float32[rows]
        if f32.any():
            vals = vals.copy()
            vals[f32] = vals[f32].astype(np.float32).astype(str).astype(np.float64)
        ts_ms = (ts[rows] // _NS_PER_MS).tolist()
        qn = QUALITY_NAMES[q[rows]].tolist()
        errs = ring.last_error[rows].tolist()
        out: dict[str, dict[str, Any]] = {}
        for k, (i, t, x, qq, e) in enumerate(zip(rows.tolist(), ts_ms, vals.tolist(), qn, errs)):
            s = ring.last_string[i]
            entry: dict[str, Any] = {"ts": t, "v": s if s is not None else json_number(x), "q": qq}
            if qq == "bad" and e:
                entry["err"] = ring.error_text.get(e, f"error {e}")
            out[self.names[i]] = entry
        self._add_aggregates(rows, new, out)
        self._add_raw(rows, new, out)
        return out

    def _add_aggregates(self, rows: np.ndarray, new: np.ndarray, out: dict[str, dict[str, Any]]) -> None:
        agg = np.intersect1d(self.agg_rows, rows[new[rows]])
        if not len(agg):
            return
        _, w, wq, count = self.ring.pending(agg, self.cursor)
        good = wq == Quality.GOOD
        n = good.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mn = np.where(good, w, np.inf).min(axis=1, initial=np.inf)
            mx = np.where(good, w, -np.inf).max(axis=1, initial=-np.inf)
            mean = np.where(good, w, 0.0).sum(axis=1) / n
        for j, i in enumerate(agg.tolist()):
            entry = out[self.names[i]]
            ok = n[j] > 0
            if self.want["min"][i]:
                entry["min"] = json_number(mn[j]) if ok else None
            if self.want["max"][i]:
                entry["max"] = json_number(mx[j]) if ok else None
            if self.want["mean"][i]:
                entry["mean"] = json_number(mean[j]) if ok else None
            entry["n"] = int(n[j])

    def _add_raw(self, rows: np.ndarray, new: np.ndarray, out: dict[str, dict[str, Any]]) -> None:
        raw = np.intersect1d(self.raw_rows, rows[new[rows]])
        if not len(raw):
            return
        ts, w, wq, count = self.ring.pending(raw, self.cursor)
        for j, i in enumerate(raw.tolist()):
            c = int(count[j])
            vals = w[j, :c]
            entry = out[self.names[i]]
            entry["raw"] = {
                "ts": (ts[j, :c] // _NS_PER_MS).tolist(),
                "v": [None if x != x else x for x in vals.tolist()],
                "q": QUALITY_NAMES[wq[j, :c]].tolist(),
            }
