"""Swinging-door trending (SDT) compression, streaming, vectorised over many tags at once.

Historians (PI, among others) archive a value only when a straight line from the last archived point can no
longer pass within ``deviation`` of every sample since: each new sample narrows a "door" of slopes
``[lower, upper]``; when the door closes (``lower > upper``) the previous sample is archived and a new door
opens from it. A consumer rebuilds the signal by joining the archived points with straight lines, and every
original sample lies within ``deviation`` of that line.

Rules of this implementation a consumer can rely on:

- the first sample of a tag is archived;
- a sample whose quality differs from the last archived one, or whose value is NaN, is archived together with
  the sample before it (quality changes are never compressed away);
- ``max_time``: a sample at least ``max_time`` after the last archived one is archived (a heartbeat, so a
  flat signal still shows up);
- archiving is decided one sample late (when the door closes), so the newest sample is usually pending.

State is kept per tag between calls. The Python loop runs over the columns of a window (samples per tag
since the last call), each step over all tags at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Archived:
    """Points archived by one :meth:`SwingingDoor.feed` call, grouped by row (``start[i]:start[i+1]``)."""

    start: np.ndarray  # int64, len rows + 1
    ts: np.ndarray  # int64 ns
    values: np.ndarray
    quality: np.ndarray


class SwingingDoor:
    """SDT state for ``n`` tags, each with its own ``deviation`` and ``max_time`` (seconds)."""

    def __init__(self, deviation: np.ndarray, max_time: np.ndarray) -> None:
        n = len(deviation)
        self.dev = np.asarray(deviation, dtype=np.float64)
        self.max_ns = (np.asarray(max_time, dtype=np.float64) * 1e9).astype(np.int64)
        self.a_t = np.zeros(n, dtype=np.int64)
        self.a_v = np.zeros(n)
        self.a_q = np.full(n, 255, dtype=np.uint8)
        self.has_a = np.zeros(n, dtype=bool)
        self.p_t = np.zeros(n, dtype=np.int64)
        self.p_v = np.zeros(n)
        self.p_q = np.zeros(n, dtype=np.uint8)
        self.has_p = np.zeros(n, dtype=bool)
        self.up = np.full(n, np.inf)
        self.lo = np.full(n, -np.inf)

    def feed(
        self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray, quality: np.ndarray, count: np.ndarray
    ) -> Archived:
        """Feed windows (shape ``(len(rows), k)``, ``count`` valid columns per row) for the tags ``rows``."""
        out_r: list[np.ndarray] = []
        out_t: list[np.ndarray] = []
        out_v: list[np.ndarray] = []
        out_q: list[np.ndarray] = []

        def emit(sel: np.ndarray, t: np.ndarray, v: np.ndarray, q: np.ndarray) -> None:
            if sel.any():
                out_r.append(np.flatnonzero(sel))
                out_t.append(t[sel])
                out_v.append(v[sel])
                out_q.append(q[sel])

        for j in range(ts.shape[1]):
            live = count > j
            if not live.any():
                break
            t, v, q = ts[:, j], values[:, j], quality[:, j]
            a_t, a_v, a_q = self.a_t[rows], self.a_v[rows], self.a_q[rows]
            has_a, has_p = self.has_a[rows], self.has_p[rows]
            p_t, p_v, p_q = self.p_t[rows], self.p_v[rows], self.p_q[rows]
            dev = self.dev[rows]
            with np.errstate(invalid="ignore", divide="ignore"):
                dt = (t - a_t) / 1e9
                up = np.minimum(self.up[rows], (v + dev - a_v) / dt)
                lo = np.maximum(self.lo[rows], (v - dev - a_v) / dt)
            first = live & ~has_a
            broken = live & has_a & ((q != a_q) | np.isnan(v) | np.isnan(a_v))
            timed = live & has_a & ~broken & (t - a_t >= self.max_ns[rows])
            closed = live & has_a & ~broken & ~timed & (lo > up)
            # the sample before a break or a closed door is archived first
            emit((broken | closed) & has_p, p_t, p_v, p_q)
            restart = first | broken | timed
            emit(restart, t, v, q)
            # new archive point: x for restarts, p for a closed door
            na_t = np.where(restart, t, np.where(closed & has_p, p_t, a_t))
            na_v = np.where(restart, v, np.where(closed & has_p, p_v, a_v))
            na_q = np.where(restart, q, np.where(closed & has_p, p_q, a_q))
            with np.errstate(invalid="ignore", divide="ignore"):
                dt2 = (t - na_t) / 1e9
                c_up = (v + dev - na_v) / dt2
                c_lo = (v - dev - na_v) / dt2
            new_up = np.where(restart, np.inf, np.where(closed, c_up, up))
            new_lo = np.where(restart, -np.inf, np.where(closed, c_lo, lo))
            upd = rows[live]
            self.a_t[upd], self.a_v[upd], self.a_q[upd] = na_t[live], na_v[live], na_q[live]
            self.has_a[upd] = True
            self.up[upd], self.lo[upd] = new_up[live], new_lo[live]
            self.p_t[upd], self.p_v[upd], self.p_q[upd] = t[live], v[live], q[live]
            self.has_p[upd] = ~restart[live]
        return _group(len(rows), out_r, out_t, out_v, out_q)


def _group(n: int, r: list, t: list, v: list, q: list) -> Archived:
    if not r:
        return Archived(np.zeros(n + 1, dtype=np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0, np.uint8))
    rr = np.concatenate(r)
    order = np.argsort(rr, kind="stable")
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rr, minlength=n), out=start[1:])
    return Archived(start, np.concatenate(t)[order], np.concatenate(v)[order], np.concatenate(q)[order])
