"""Reduction per publish interval: what of the ring buffer goes into the next message of an asset.

Per tag (``mode``), vectorised over all tags of an asset:

- ``rbe`` (report by exception, the default): the newest value is sent when it moved more than the
  deadband from the value last sent — ``deadband`` (absolute) or ``deadband_percent`` (of the last value
  sent), the larger of the two; any change when both are 0 — when its quality changed, or when
  ``heartbeat`` has passed since it was last sent;
- ``aggregate: [min, max, mean, count]`` (with any mode): aggregates over the good samples that arrived
  since the last publish, sent every interval that has new samples (``n`` = samples aggregated);
- ``raw``: every sample of the window as arrays under ``"raw"``;
- ``lttb``: at most ``points`` samples of the window, chosen by LTTB (:mod:`gateway.lttb`), under ``"lttb"``;
- ``swinging_door``: the samples swinging-door compression archives (:mod:`gateway.swinging_door`) with
  ``deviation``, under ``"swinging_door"``; the heartbeat is its max time.

Every due tag carries its newest sample (ts, value, quality). String tags (kept as last value only) are
sent when the text or quality changes, or on heartbeat. A per-uplink :class:`ReduceProfile` supplies
defaults for the fields a tag does not set itself. Docs: docs/reduction.md.

The reducer returns arrays (:class:`Reduced`), never wire text: values already at publish precision
(float32 tags as float32, the rest without float64 noise), NaN where the value is null. The encoders
(:mod:`gateway.encoders`) turn a :class:`Reduced` into JSON or Sparkplug.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gateway.batch import Quality
from gateway.config.common import ReduceProfile, TagBase
from gateway.lttb import lttb_indices
from gateway.ringbuffer import RingBuffer
from gateway.swinging_door import SwingingDoor

_NS_PER_MS = 1_000_000
_PROFILE_FIELDS = tuple(ReduceProfile.model_fields)


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


#: 10.0 ** k for k = 0 .. 31 (exact up to 1e22), the same values ``10.0 ** k`` gives
_POW10 = 10.0 ** np.arange(32, dtype=np.float64)


def json_numbers(x: np.ndarray) -> np.ndarray:
    """:func:`json_number` over an array, vectorised: values rounded to 15 significant digits.

    ``round(x * 10**k) / 10**k`` with an exact power of ten is the float nearest to the 15-digit decimal,
    as parsing ``"%.15g" % x`` gives. NaN stays NaN (the encoder writes null); magnitudes outside
    [1e-8, 1e15) are left alone.
    """
    if not np.size(x):  # no value yet (a snapshot before the first poll): min() below has no identity
        return np.array(x, dtype=np.float64)
    a = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = 14 - np.floor(np.log10(a))
    ok = (a < 1e15) & (a >= 1e-8)
    k = np.where(ok, k, 0.0)
    # a table of powers instead of ``10.0 ** k`` (k is 0 .. 23 where ok, -1 just below 1e15)
    p = _POW10[k.astype(np.intp)] if k.min() >= 0 else 10.0**k
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(ok, np.round(x * p) / p, x)


def float32_numbers(x: np.ndarray) -> np.ndarray:
    """float64 values of float32 tags as published: the shortest decimal that reads back as the same float32
    (``123.4``, not ``123.40000152587891``), vectorised; the same as ``float(str(np.float32(v)))``.

    For 6..9 significant digits (a float32 never needs more; and at most one decimal of 7 or fewer digits
    lies within a float32's rounding interval, so a shorter one is found at 6 digits with trailing zeros),
    the nearest decimal with that many digits is computed with an exact power of ten (exact in float64 up to
    1e22, which covers magnitudes 1e-14 .. 1e22; the rare others go through ``str``), all four candidates of
    every value in one pass, and the shortest that converts back to the same float32 is kept. Any shape; NaN
    and infinities stay as they are.
    """
    shape = np.shape(x)
    f = np.ravel(x).astype(np.float32)
    out = f.astype(np.float64)
    a = np.abs(out)
    finite = np.isfinite(out) & (a > 0)
    in_range = (a >= 1e-14) & (a < 1e22)
    odd = np.flatnonzero(finite & ~in_range)
    if len(odd):
        out[odd] = f[odd].astype(str).astype(np.float64)
    sel = finite & in_range
    todo = None if sel.all() else np.flatnonzero(sel)
    if not len(out) or (todo is not None and not len(todo)):  # nothing to round (no value yet, or none finite)
        return out.reshape(shape)
    v, want = (out, f) if todo is None else (out[todo], f[todo])
    # the four candidates (6, 7, 8, 9 digits) of every value at once, (4, m), and the first that reads back
    e = np.floor(np.log10(np.abs(v))).astype(np.int64)
    r = _nearest_decimal(v, _DIGITS_MINUS_1 - e)
    ok = r.astype(np.float32) == want
    first = ok.argmax(axis=0)
    cols = np.arange(len(v))
    found = np.where(ok[first, cols], r[first, cols], v)
    if todo is None:
        return found.reshape(shape)
    out[todo] = found
    return out.reshape(shape)


_DIGITS_MINUS_1 = np.arange(5, 9)[:, None]  # significant digits - 1 of the candidates 6 .. 9


def _nearest_decimal(v: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``round(v * 10**k) / 10**k`` (``round(v / 10**-k) * 10**-k`` where ``k < 0``): the float nearest to the
    decimal with ``k`` digits after the point; one branch when every ``k`` has the same sign (the usual case)."""
    if k.min() >= 0:
        p = _POW10[k]
        return np.round(v * p) / p
    if k.max() < 0:
        p = _POW10[-k]
        return np.round(v / p) * p
    p = _POW10[np.abs(k)]
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(k >= 0, np.round(v * p) / p, np.round(v / p) * p)


def json_value(x: float, float32: bool) -> float | None:
    """One value as published: float32 tags at float32 precision, others via :func:`json_number`."""
    if float32 and x == x:
        return float(str(np.float32(x)))
    return json_number(x)


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if x != x else x for x in values]


def _as_json_list(values: np.ndarray) -> list[float | None]:
    """``values.tolist()`` with NaN as None (the per-element pass only when there is a NaN)."""
    out = values.tolist()
    return _nan_to_none(out) if np.isnan(values).any() else out


def json_list(values: np.ndarray, float32: bool) -> list[float | None]:
    """A whole array as published (vectorised :func:`json_value`): for history views and series."""
    return _as_json_list(float32_numbers(values) if float32 else json_numbers(values))


def effective_settings(tag: TagBase, profile: ReduceProfile | None) -> dict[str, Any]:
    """The reduction fields of ``tag``, with the profile's value where the tag does not set the field."""
    own = tag.model_fields_set
    return {
        f: getattr(profile, f)
        if profile is not None and f not in own and f in profile.model_fields_set
        else getattr(tag, f)
        for f in _PROFILE_FIELDS
    }


INTEGER_TYPES = frozenset(
    {"int16", "uint16", "int32", "uint32", "int64", "uint64", "int8", "uint8", "bool", "bit", "coil", "discrete"}
)


def integer_tags(tags: Sequence[TagBase]) -> np.ndarray:
    """Tags whose published value is a JSON integer: an integer (or bool) type without scale or offset."""
    return np.array(
        [str(getattr(t, "type", "")) in INTEGER_TYPES and t.scale == 1 and t.offset == 0 for t in tags], dtype=bool
    )


@dataclass(slots=True)
class Series:
    """The samples of one tag's window (``raw``, ``lttb``, ``swinging_door``): ``pos`` indexes the rows."""

    pos: int
    ts_ms: np.ndarray
    values: np.ndarray
    quality: np.ndarray


@dataclass(slots=True)
class Reduced:
    """One asset's due tags for the next message, as arrays aligned with ``rows`` (tag indices, ascending).

    ``values`` are at publish precision with NaN for null; ``integer`` marks rows written as integers.
    ``strings`` and ``errors`` map a row position to the text value / the error text of a bad tag.
    Aggregates cover the rows at ``agg_pos``: ``agg[key]`` aligned with ``agg_pos`` (NaN: no good sample),
    ``agg_keys[j]`` the keys that row carries. ``series[mode]`` the windows of raw/lttb/swinging-door tags.
    """

    names: list[str]
    rows: np.ndarray
    ts_ms: np.ndarray
    values: np.ndarray
    quality: np.ndarray
    integer: np.ndarray
    strings: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    agg_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    agg: dict[str, np.ndarray] = field(default_factory=dict)
    agg_keys: list[tuple[str, ...]] = field(default_factory=list)
    series: dict[str, list[Series]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def samples(self) -> int:
        """Samples the message carries: one per tag, or every sample of a ``raw`` window."""
        raw = self.series.get("raw", ())
        return len(self.rows) - len(raw) + sum(len(x.values) for x in raw)

    @property
    def plain(self) -> bool:
        """No aggregates, series, strings or errors: every row is just ts, value, quality."""
        return not (len(self.agg_pos) or self.series or self.strings or self.errors)


class Reducer:
    """Decides, per publish interval, which tags of one asset are sent and with what.

    One reducer per asset and uplink (each uplink has its own profile and its own idea of what was sent);
    all of them read the asset's one ring buffer.
    """

    def __init__(
        self,
        tags: Sequence[TagBase],
        ring: RingBuffer,
        *,
        heartbeat: float,
        float32: np.ndarray | None = None,
        integer: np.ndarray | None = None,
        profile: ReduceProfile | None = None,
    ) -> None:
        n = len(tags)
        self.tags = list(tags)
        self.names = [t.name for t in tags]
        self.ring = ring
        self.default_heartbeat = heartbeat
        #: shared with the asset (not copied): a driver that learns types from the values (OPC UA) is followed
        self.float32 = np.zeros(n, dtype=bool) if float32 is None else np.asarray(float32, dtype=bool)
        self.integer = integer_tags(tags) if integer is None else np.asarray(integer, dtype=bool)
        self.cursor = np.zeros(n, dtype=np.int64)
        self.sent = _Sent(
            value=np.full(n, np.nan),
            quality=np.full(n, 255, dtype=np.uint8),
            at=np.full(n, -np.inf),
            string=[None] * n,
        )
        self.use_profile(profile)

    def use_profile(self, profile: ReduceProfile | None, heartbeat: float | None = None) -> None:
        """(Re)compile the per-tag settings, with ``profile`` filling what tags do not set (also while
        running: a metered link's profile applies from the next message on)."""
        if heartbeat is not None:
            self.default_heartbeat = heartbeat
        s = [effective_settings(t, profile) for t in self.tags]
        self.deadband = np.array([x["deadband"] for x in s], dtype=np.float64)
        self.deadband_pct = np.array([x["deadband_percent"] for x in s], dtype=np.float64) / 100.0
        hb = self.default_heartbeat
        self.heartbeat = np.array([t.heartbeat if t.heartbeat is not None else hb for t in self.tags], dtype=float)
        aggs = [set(x["aggregate"]) for x in s]
        self.has_agg = np.array([bool(a) for a in aggs], dtype=bool)
        #: per tag, an index into ``agg_combos``: the keys its aggregate entry carries ("n" always)
        combos = [tuple(k for k in ("min", "max", "mean") if k in a) + ("n",) for a in aggs]
        self.agg_combos = sorted(set(combos))
        self.want_keys = np.array([self.agg_combos.index(c) for c in combos], dtype=np.int64)
        modes = np.array([x["mode"] for x in s], dtype=object)
        self.mode_mask = {m: modes == m for m in ("raw", "lttb", "swinging_door")}
        self.points = np.array([x["points"] for x in s], dtype=np.int64)
        self.always_on_new = (modes == "raw") | (modes == "lttb") | self.has_agg
        self.every_tag_on_new = bool(self.always_on_new.all())
        sd = np.flatnonzero(modes == "swinging_door")
        self.sdt = SwingingDoor(np.array([s[i]["deviation"] for i in sd.tolist()]), self.heartbeat[sd])
        self.sdt_pos = np.full(len(self.tags), -1, dtype=np.int64)
        self.sdt_pos[sd] = np.arange(len(sd))

    def reduce(self, now: float) -> Reduced | None:
        """The due tags of the next message, or None when nothing is due. ``now``: monotonic seconds."""
        ring = self.ring
        ts, v, q, has = ring.last()
        new = ring.head > self.cursor
        sent = self.sent

        if self.every_tag_on_new:  # raw, lttb or aggregates everywhere: a tag with a new sample is due
            due = new.copy()
        else:
            with np.errstate(invalid="ignore"):
                moved = np.abs(v - sent.value)
                threshold = np.maximum(self.deadband, self.deadband_pct * np.abs(sent.value))
                value_changed = np.where(threshold > 0, moved > threshold, v != sent.value)
            nan_changed = np.isnan(v) != np.isnan(sent.value)
            value_changed = (value_changed & ~np.isnan(moved)) | nan_changed
            strings_changed = self._strings_changed(new)
            due = new & (value_changed | (q != sent.quality) | self.always_on_new | strings_changed)
        due |= has & (now - sent.at >= self.heartbeat)
        sdt = self._swinging_door(new)
        if sdt:
            due[list(sdt)] = True

        rows = np.flatnonzero(due)
        out = None
        if len(rows):
            out = self._entries(rows, ts, v, q, new)
            if sdt:
                pos = {int(r): j for j, r in enumerate(rows.tolist())}
                out.series["swinging_door"] = [Series(pos[i], *sdt[i]) for i in sorted(sdt)]
            if len(rows) == len(due):  # every tag: whole-array copies, no gather and scatter
                sent.value[:], sent.quality[:], sent.at[:] = v, q, now
            else:
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

    def _published(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values as published: float32 tags at float32 precision, the rest without float64 noise."""
        f32 = self.float32[rows]
        if not f32.any():
            return json_numbers(values)
        if f32.all():
            return float32_numbers(values)
        if values.ndim == 2:
            f32 = np.broadcast_to(f32[:, None], values.shape)
        out = np.empty_like(values)
        out[f32] = float32_numbers(values[f32])
        other = ~f32
        out[other] = json_numbers(values[other])
        return out

    def _entries(self, rows: np.ndarray, ts: np.ndarray, v: np.ndarray, q: np.ndarray, new: np.ndarray) -> Reduced:
        ring = self.ring
        if len(rows) == len(v):  # every tag (the arrays are the reducer's own copies of the ring's last)
            qr, has_new, vr, tr = q, new, v, ts
        else:
            qr, has_new, vr, tr = q[rows], new[rows], v[rows], ts[rows]
        agg = self._aggregates(rows, has_new)
        if agg is None:
            values = self._published(rows, vr)
        else:  # one publishing pass over the values and the min/max/mean columns together
            pos, sel, stats, ok, n = agg
            both = self._published(np.concatenate([rows, sel, sel, sel]), np.concatenate([vr, *stats]))
            values, published = both[: len(rows)], both[len(rows) :]
            if not ok.all():
                published[~np.concatenate([ok, ok, ok])] = np.nan
        out = Reduced(self.names, rows, tr // _NS_PER_MS, values, qr, self.integer[rows])
        if ring.is_string[rows].any():
            for j in np.flatnonzero(ring.is_string[rows] & (qr != Quality.BAD)).tolist():
                text = ring.last_string[int(rows[j])]
                if text is not None:  # a bad string tag has no value, like a bad number
                    out.strings[j] = text
        bad = np.flatnonzero((qr == Quality.BAD) & (ring.last_error[rows] != 0))
        for j in bad.tolist():
            e = int(ring.last_error[rows[j]])
            out.errors[j] = ring.error_text.get(e, f"error {e}")
        if agg is not None:
            k = len(sel)
            out.agg_pos = pos
            out.agg = {key: published[j * k : (j + 1) * k] for j, key in enumerate(("min", "max", "mean"))}
            out.agg["n"] = n.astype(np.int64)
            combos = self.agg_combos
            if len(combos) == 1:  # every aggregated tag carries the same keys: one list, no lookup per tag
                out.agg_keys = [combos[0]] * k
            else:
                out.agg_keys = [combos[c] for c in self.want_keys[sel].tolist()]
        for mode in ("raw", "lttb"):
            self._add_series(mode, rows, has_new, out)
        return out

    def _aggregates(
        self, rows: np.ndarray, has_new: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray, np.ndarray] | None:
        """Min, max and mean over the good samples since the last publish of the aggregated rows with new
        samples, not yet at publish precision: ``(positions in rows, tags, [min, max, mean], n > 0, n)``."""
        pos = np.flatnonzero(has_new & self.has_agg[rows])
        if not len(pos):
            return None
        agg = rows[pos]
        _, w, wq, count = self.ring.pending(agg, self.cursor, copy=False)
        if not wq.any():  # every sample good (GOOD is 0), none padded: plain reductions over ``count`` samples
            n = count
            stats = [w.min(axis=1), w.max(axis=1), w.mean(axis=1)]
        else:
            good = wq == Quality.GOOD
            n = good.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                stats = [
                    np.where(good, w, np.inf).min(axis=1, initial=np.inf),
                    np.where(good, w, -np.inf).max(axis=1, initial=-np.inf),
                    np.where(good, w, 0.0).sum(axis=1) / n,
                ]
        return pos, agg, stats, n > 0, n

    def _add_series(self, mode: str, rows: np.ndarray, has_new: np.ndarray, out: Reduced) -> None:
        pos = np.flatnonzero(has_new & self.mode_mask[mode][rows])
        if not len(pos):
            return
        sel = rows[pos]
        ts, w, wq, count = self.ring.pending(sel, self.cursor)
        if mode == "lttb":
            ts, w, wq, count = self._lttb(sel, ts, w, wq, count)
        tms = ts // _NS_PER_MS
        vals = self._published(sel, w)
        out.series[mode] = [
            Series(int(p), tms[j, :c], vals[j, :c], wq[j, :c])
            for j, (p, c) in enumerate(zip(pos.tolist(), count.tolist()))
        ]

    def _lttb(self, rows, ts, w, wq, count):
        """Down-sample each row's window to its ``points``; rows grouped by (count, points)."""
        pts = self.points[rows]
        k_out = int(np.minimum(count, pts).max())
        o_ts = np.zeros((len(rows), k_out), dtype=np.int64)
        o_w = np.full((len(rows), k_out), np.nan)
        o_q = np.full((len(rows), k_out), Quality.BAD, dtype=np.uint8)
        keys = np.stack([count, pts], axis=1)
        for c, p in np.unique(keys, axis=0).tolist():
            sel = np.flatnonzero((count == c) & (pts == p))
            t = ts[sel, :c]
            idx = lttb_indices((t - t[:, :1]).astype(np.float64), w[sel, :c], p)
            m = idx.shape[1]
            o_ts[sel, :m] = np.take_along_axis(t, idx, axis=1)
            o_w[sel, :m] = np.take_along_axis(w[sel, :c], idx, axis=1)
            o_q[sel, :m] = np.take_along_axis(wq[sel, :c], idx, axis=1)
        return o_ts, o_w, o_q, np.minimum(count, pts)

    def _swinging_door(self, new: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Feed the new samples of swinging-door tags; tag -> archived (ts ms, values, quality), only tags
        with some."""
        rows = np.flatnonzero(self.mode_mask["swinging_door"] & new)
        if not len(rows):
            return {}
        ts, w, wq, count = self.ring.pending(rows, self.cursor)
        arch = self.sdt.feed(self.sdt_pos[rows], ts, w, wq, count)
        # feed() groups by position in its own row list; map back to our rows
        result: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if len(arch.ts) == 0:
            return result
        tms = arch.ts // _NS_PER_MS
        start = arch.start.tolist()
        for j, i in enumerate(rows.tolist()):
            a, b = start[j], start[j + 1]
            if b > a:
                vals = self._published(np.array([i]), arch.values[a:b][None, :])[0]
                result[i] = (tms[a:b], vals, arch.quality[a:b])
        return result


def snapshot(ring: RingBuffer, names: list[str], float32: np.ndarray, integer: np.ndarray) -> Reduced:
    """Every tag's newest sample (tags that have one), as a :class:`Reduced` for the retained ``last`` message."""
    ts, v, q, has = ring.last()
    rows = np.flatnonzero(has)
    values = v[rows]
    f32 = float32[rows]
    published = json_numbers(values)
    if f32.any():
        published[f32] = float32_numbers(values[f32])
    out = Reduced(names, rows, ts[rows] // _NS_PER_MS, published, q[rows], integer[rows])
    for j in np.flatnonzero(ring.is_string[rows] & (q[rows] != Quality.BAD)).tolist():
        text = ring.last_string[int(rows[j])]
        if text is not None:
            out.strings[j] = text
    return out
