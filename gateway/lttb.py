"""Largest-Triangle-Three-Buckets down-sampling, vectorised over many series at once.

LTTB (Steinarsson, 2013) keeps the first and the last sample of a window and, from each of ``n - 2`` equal
buckets in between, the sample that spans the largest triangle with the sample kept from the previous bucket
and the mean of the next bucket. It keeps the visual shape of a trend (peaks, steps) with a fixed number of
points, which makes it the right choice for charts, and the wrong one for computing energy or averages
(use window aggregates for those).

The only Python loop is over the ``n - 2`` buckets; each step works on every series and every sample of the
bucket at once.
"""

from __future__ import annotations

import numpy as np


def lttb_indices(t: np.ndarray, v: np.ndarray, n_out: int) -> np.ndarray:
    """Column indices of the samples LTTB keeps, shape ``(rows, min(n_out, k))``, ascending per row.

    ``t`` and ``v`` have shape ``(rows, k)`` (every row the same length ``k``); ``t`` is any increasing
    time axis (float). NaN values (bad samples) are never picked from a bucket that has a number.
    """
    rows, k = v.shape
    if n_out >= k:
        return np.broadcast_to(np.arange(k), (rows, k)).copy()
    if n_out < 3:
        raise ValueError("LTTB needs at least 3 output points")
    edges = np.floor(np.linspace(1, k - 1, n_out - 1)).astype(np.int64)
    out = np.empty((rows, n_out), dtype=np.int64)
    out[:, 0] = 0
    out[:, -1] = k - 1
    r = np.arange(rows)
    a_t, a_v = t[:, 0], v[:, 0]
    with np.errstate(invalid="ignore"):
        for b in range(n_out - 2):
            lo, hi = edges[b], edges[b + 1]
            if b + 2 < n_out - 1:
                nlo, nhi = edges[b + 1], edges[b + 2]
                avg_t = t[:, nlo:nhi].mean(axis=1)
                avg_v = _nanmean(v[:, nlo:nhi])
            else:
                avg_t, avg_v = t[:, -1], v[:, -1]
            ct, cv = t[:, lo:hi], v[:, lo:hi]
            area = np.abs((a_t - avg_t)[:, None] * (cv - a_v[:, None]) - (a_t[:, None] - ct) * (avg_v - a_v)[:, None])
            area = np.where(np.isnan(area), -1.0, area)
            pick = lo + np.argmax(area, axis=1)
            out[:, b + 1] = pick
            a_t, a_v = t[r, pick], v[r, pick]
            a_v = np.where(np.isnan(a_v), 0.0, a_v)
    return out


def _nanmean(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    n = ok.sum(axis=1)
    s = np.where(ok, x, 0.0).sum(axis=1)
    return np.where(n > 0, s / np.maximum(n, 1), 0.0)
