"""The JSON payload of data messages, in two shapes (docs/payload.md).

``full`` (the default): every due tag as an object::

    {"seq": 42, "ts": 1764655200123, "asset": "press1",
     "tags": {"pressure": {"ts": 1764655200100, "v": 12.5, "q": "good"}, ...}}

with ``err`` on a bad tag, ``min``/``max``/``mean``/``n`` for aggregated tags and ``raw``/``lttb``/
``swinging_door`` series (``{"ts": [...], "v": [...], "q": [...]}``).

``compact``: the same message, but a tag whose quality is good, whose sample time is the message's ``ts``
(within ``ts_tolerance_ms``) and that carries nothing else is written as its bare value
(``"pressure": 12.5``); every other tag keeps the full object. The message ``ts`` is then the newest
sample time of the message. It is written straight from the arrays: one vectorised formatting pass over
the values (orjson on a float64 array writes NaN as ``null``), no dict per bare tag.

Numbers: integer tags (int/uint/bool types without scale or offset) as JSON integers, float32 tags at
float32 precision, others without float64 noise (done by the reducer). A replayed payload starts with
``"replay":true``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from gateway.batch import QUALITY_NAMES, Quality
from gateway.encoders import wire as _wire
from gateway.reduce import Reduced

SHAPES = ("full", "compact")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_Q_TEXT = np.array([orjson.dumps(str(q)) for q in QUALITY_NAMES.tolist()], dtype=object)
_NO_INTS = np.False_  # a mean is never written as an integer


@functools.cache
def _layout(agg_keys: tuple[str, ...]) -> tuple[Any, ...]:
    """The pieces of one row in :meth:`JsonEncoder._objects`: constant bytes, or ``(column, prefix, suffix)``.

    The constant labels go into the texts of columns that are formatted once per run of equal values (the
    timestamps: one per request; the counts: one for all) or from a table (quality), so a row of
    ``ts, v, q, min, max, mean, n`` is 9 pieces: ``"name":{"ts":`` · ts ``,"v":`` · v ·
    ``,"q":"good","min":`` · min · ``,"max":`` · max · ``,"mean":`` · mean · ``,"n":`` n ``},``.
    A row's last piece ends with ``},`` (the last row's without its comma).
    """
    slots: list[Any] = [b"", ("ts", b"", b',"v":'), ("v", b"", b"")]
    labels = [b',"' + key.encode() + b'":' for key in agg_keys]
    slots.append(("q", b"", labels[0] if agg_keys else b"},"))
    for c, key in enumerate(agg_keys):
        last = c == len(agg_keys) - 1
        if key == "n":
            slots.append(("n", labels[c] if c else b"", b"}," if last else labels[c + 1]))
            continue
        if c:
            slots.append(labels[c])
        slots.append((key, b"", b""))
        if last:
            slots.append(b"},")
    return tuple(slots)


@functools.cache
def _q_labels(suffix: bytes) -> np.ndarray:
    """``,"q":"good"`` per quality, followed by ``suffix`` (the next label, or the closing brace)."""
    return np.array([b',"q":' + t + suffix for t in _Q_TEXT.tolist()], dtype=object)


def _texts(
    values: np.ndarray, integer: np.ndarray | np.bool_, merges: dict[bytes, Any] | None = None
) -> Sequence[bytes]:
    """Each value as JSON text: one orjson pass per kind (NaN -> null), integers without ``.0``.

    A column with integer and float rows formats each kind on its own and puts the texts back in row order
    with one ``itemgetter`` (kept in ``merges`` per pattern of integer rows: a tag's kind does not change
    between messages); then the texts come as a tuple."""
    if not len(values):
        return []
    values = np.ascontiguousarray(values, dtype=np.float64)
    ints = integer & np.isfinite(values)
    if not ints.any():
        return orjson.dumps(values, option=_NUMPY)[1:-1].split(b",")
    idx = np.flatnonzero(ints)
    iv = values[idx]
    if not _fits_int64(iv):  # a uint64 above 2**63: those few through ``int``
        out = orjson.dumps(values, option=_NUMPY)[1:-1].split(b",")
        for j, t in zip(idx.tolist(), orjson.dumps(_as_ints(iv))[1:-1].split(b",")):
            out[j] = t
        return out
    itexts = orjson.dumps(iv.astype(np.int64), option=_NUMPY)[1:-1].split(b",")
    if len(idx) == len(values):
        return itexts
    others = np.flatnonzero(~ints)
    ftexts = orjson.dumps(values[others], option=_NUMPY)[1:-1].split(b",")
    key = ints.tobytes()
    getter = None if merges is None else merges.get(key)
    if getter is None:
        # row j's text is at position order[j] of ftexts + itexts
        order = np.argsort(np.concatenate([others, idx]), kind="stable")
        getter = operator.itemgetter(*order.tolist())
        if merges is not None:
            if len(merges) >= 16:
                merges.clear()
            merges[key] = getter
    texts: tuple[bytes, ...] = getter(ftexts + itexts)
    return texts


def _int_texts(a: np.ndarray, prefix: bytes = b"", suffix: bytes = b"") -> list[bytes]:
    """An int64 column as JSON texts, each between ``prefix`` and ``suffix``; a column of few runs of one value
    (one timestamp per request, one count for every tag) formats each run once and repeats its text."""
    n = len(a)
    if not n:
        return []
    if n > 16:
        starts = np.flatnonzero(a[1:] != a[:-1]) + 1
        if len(starts) * 8 < n:
            heads = np.concatenate(([0], starts))
            texts = orjson.dumps(np.ascontiguousarray(a[heads]), option=_NUMPY)[1:-1].split(b",")
            out: list[bytes] = []
            for t, c in zip(texts, np.diff(heads, append=n).tolist()):
                out += [prefix + t + suffix] * c
            return out
    body = orjson.dumps(np.ascontiguousarray(a), option=_NUMPY)[1:-1]
    if not (prefix or suffix):
        return body.split(b",")
    return (prefix + body.replace(b",", suffix + b"\x00" + prefix) + suffix).split(b"\x00")


def _fits_int64(values: np.ndarray) -> bool:
    """Every (finite, integral) value fits int64, so one cast writes them all (a uint64 above 2**63 does not)."""
    return bool((np.abs(values) < 2.0**63).all())


def _as_ints(values: np.ndarray) -> list[int]:
    """Finite integral floats as Python ints: one NumPy cast where int64 holds them (a uint64 above 2**63
    does not: those few go through ``int``)."""
    if _fits_int64(values):
        return values.astype(np.int64).tolist()
    return [int(x) for x in values.tolist()]


def _list(values: np.ndarray, integer: bool) -> list[Any]:
    """A series of values as Python numbers (None for NaN), integers for integer tags."""
    if integer:
        ok = np.isfinite(values)
        if ok.all():
            return _as_ints(values)
        return [int(x) if f else None for x, f in zip(values.tolist(), ok.tolist())]
    return [None if x != x else x for x in values.tolist()]


def _split_lists(text: bytes, counts: list[int]) -> list[bytes]:
    """``[a,b,c,d,e]`` (one JSON array of numbers or strings without commas) cut into arrays of ``counts``
    elements, by byte slicing at the commas: no object per element."""
    commas = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 0x2C).tolist()
    bounds = [0, *commas, len(text) - 1]  # element i lies between bounds[i] + 1 and bounds[i + 1]
    out, i = [], 0
    for c in counts:
        out.append(b"[" + text[bounds[i] + 1 : bounds[i + c]] + b"]" if c else b"[]")
        i += c
    return out


def _series_texts(series: list[Any], integer: np.ndarray) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The ``ts``, ``v`` and ``q`` arrays of every series as JSON texts: one formatting pass over the samples
    of all of them (values of integer tags as integers, NaN as null, like :func:`entries`)."""
    counts = [len(s.values) for s in series]
    if not sum(counts):
        empty = [b"[]"] * len(series)
        return empty, list(empty), list(empty)
    ts = _split_lists(orjson.dumps(np.concatenate([s.ts_ms for s in series]), option=_NUMPY), counts)
    qs = _split_lists(b"[" + b",".join(_Q_TEXT[np.concatenate([s.quality for s in series])].tolist()) + b"]", counts)
    ints = integer[[s.pos for s in series]]
    values = np.concatenate([s.values for s in series]).astype(np.float64)
    vs = _split_lists(orjson.dumps(values, option=_NUMPY), counts)
    for k in np.flatnonzero(ints).tolist():  # integer tags' series as integers: an int64 pass where it holds them
        v = series[k].values
        exact = np.isfinite(v).all() and _fits_int64(v)
        vs[k] = orjson.dumps(v.astype(np.int64), option=_NUMPY) if exact else orjson.dumps(_list(v, True))
    return ts, vs, qs


def entries(r: Reduced, positions: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """The full-format ``tags`` object of ``r`` (of the rows at ``positions`` only, when given)."""
    names = r.names
    rows = r.rows.tolist()
    ts = r.ts_ms.tolist()
    qn = QUALITY_NAMES[r.quality].tolist()
    vals: list[Any] = [None if x != x else x for x in r.values.tolist()]
    if r.integer.any():
        for j in np.flatnonzero(r.integer & np.isfinite(r.values)).tolist():
            vals[j] = int(r.values[j])
    for j, text in r.strings.items():
        vals[j] = text
    sel = range(len(rows)) if positions is None else positions
    out = {names[rows[j]]: {"ts": ts[j], "v": vals[j], "q": qn[j]} for j in sel}
    if r.plain:
        return out
    by_pos = {j: out[names[rows[j]]] for j in sel}
    for j, text in r.errors.items():
        if j in by_pos:
            by_pos[j]["err"] = text
    if len(r.agg_pos):
        cols = {k: _list(a, False) if k != "n" else a.tolist() for k, a in r.agg.items()}
        for k, j in enumerate(r.agg_pos.tolist()):
            e = by_pos.get(j)
            if e is None:
                continue
            integer = bool(r.integer[j])
            for key in r.agg_keys[k]:
                x = cols[key][k]
                e[key] = int(x) if integer and key in ("min", "max") and x is not None else x
    for mode, series in r.series.items():
        for s in series:
            e = by_pos.get(s.pos)
            if e is not None:
                e[mode] = {
                    "ts": s.ts_ms.tolist(),
                    "v": _list(s.values, bool(r.integer[s.pos])),
                    "q": QUALITY_NAMES[s.quality].tolist(),
                }
    return out


class _AssetTexts:
    """What the full and compact writers keep for one asset: the texts of its tag names, the piece lists of
    whole messages per aggregate layout, and the row merges of :func:`_texts` (per asset, so that many assets
    do not push each other's out)."""

    __slots__ = ("names", "keys", "heads", "templates", "merges")

    def __init__(self, names: list[str]) -> None:
        self.names = names  # the reducer's list, compared by identity (see JsonEncoder._of)
        self.keys = [orjson.dumps(n) + b":" for n in names]  # b'"name":' per tag
        self.heads = [k + b'{"ts":' for k in self.keys]  # b'"name":{"ts":' per tag
        self.templates: dict[tuple[str, ...], list[bytes]] = {}
        self.merges: dict[bytes, Any] = {}  # pattern of integer rows -> itemgetter (see _texts)

    def template(self, r: Reduced, agg_keys: tuple[str, ...], slots: tuple[Any, ...]) -> list[bytes]:
        """The piece list of :meth:`JsonEncoder._objects` with its constant pieces in place (kept when ``r``
        has every tag), with one free slot before the first row and one after the last (for the message's head
        and tail)."""
        n = len(r.rows)
        full = n == len(self.names)
        out = self.templates.get(agg_keys) if full else None
        if out is not None:
            return out
        width = len(slots)
        out = [b""] * (width * n + 2)
        out[1:-1:width] = self.heads if full else [self.heads[i] for i in r.rows.tolist()]
        for pos, slot in enumerate(slots[1:], 1):
            if isinstance(slot, bytes):
                out[1 + pos : -1 : width] = [slot] * n
        if isinstance(slots[-1], bytes):
            out[-2] = slots[-1][:-1]
        if full:
            self.templates[agg_keys] = out
        return out


class JsonEncoder:
    """JSON data messages of one uplink (``shape``: full or compact); see the module docstring."""

    def __init__(self, shape: str = "full", ts_tolerance_ms: int = 0) -> None:
        if shape not in SHAPES:
            raise ValueError(f"payload must be one of {', '.join(SHAPES)}")
        self.shape = shape
        self.ts_tolerance_ms = int(ts_tolerance_ms)
        self._assets: dict[str, _AssetTexts] = {}

    def _of(self, asset: str, names: list[str]) -> _AssetTexts:
        """The texts kept for ``asset``, made again when its tag names are another list: a reload builds a
        new reducer (and names list), even when it keeps the number of tags."""
        kept = self._assets.get(asset)
        if kept is None or kept.names is not names:
            kept = self._assets[asset] = _AssetTexts(names)
        return kept

    def data(self, asset: str, seq: int, ts_ms: int, reduced: Reduced) -> bytes:
        if self.shape == "compact":
            return self._compact(asset, seq, reduced)
        head = orjson.dumps({"seq": seq, "ts": ts_ms, "asset": asset})
        return self._objects(asset, reduced, head[:-1] + b',"tags":{', b"}}")

    def _objects(self, asset: str, r: Reduced, head: bytes = b"", tail: bytes = b"") -> bytes:
        """The full-shape ``tags`` members between ``head`` and ``tail``, written from the arrays (one formatting
        pass per column, interleaved) when every row is ts, v, q, or every row also carries the same
        aggregates; else (errors, strings, series, mixed aggregates) one piece per row (:meth:`_members`)."""
        if not len(r.rows):
            return head + tail
        n = len(r.rows)
        agg_keys: tuple[str, ...] = ()
        if not r.plain:
            keys_all = r.agg_keys
            uniform = (
                not (r.errors or r.strings or r.series) and len(r.agg_pos) == n and keys_all.count(keys_all[0]) == n
            )
            if not uniform:  # errors, strings, series, mixed aggregates: one piece per row, from the arrays
                return head + b",".join(self._members(asset, r, range(n))) + tail
            agg_keys = keys_all[0]  # every row aggregated alike (the usual profile): columns too
        # a row is a fixed list of pieces (see _layout): its constant pieces sit in a template list kept per
        # asset and layout, every column goes in by one slice assignment (in C), and the list is joined once
        slots = _layout(agg_keys)
        width = len(slots)
        kept = self._of(asset, r.names)
        out = kept.template(r, agg_keys, slots)
        for pos, slot in enumerate(slots):
            if isinstance(slot, bytes):
                continue
            column, prefix, suffix = slot
            texts: Sequence[bytes]
            if column == "ts":
                texts = _int_texts(r.ts_ms, prefix, suffix)
            elif column == "v":
                texts = _texts(r.values, r.integer, kept.merges)
            elif column == "q":
                labels = _q_labels(suffix)
                texts = labels[r.quality].tolist() if r.quality.any() else [labels[0]] * n
            elif column == "n":
                texts = _int_texts(r.agg["n"], prefix, suffix)
            else:  # min/max of an integer tag are integers; a mean never is
                texts = _texts(r.agg[column], r.integer if column != "mean" else _NO_INTS, kept.merges)
            out[1 + pos : -1 : width] = texts
        if not isinstance(slots[-1], bytes):  # the last row's closing piece without its comma
            out[-2] = out[-2][:-1]
        out[0], out[-1] = head, tail  # the message around the members: no copy of the whole text
        return b"".join(out)

    def _members(self, asset: str, r: Reduced, sel: range | list[int]) -> list[bytes]:
        """``"name":{...}`` of the rows at ``sel`` with whatever each carries (error, aggregates, a series),
        keys in the order :func:`entries` gives them. Every column is formatted in one pass over all rows
        (series: one pass over all their samples); per row only the row's pieces are joined."""
        kept = self._of(asset, r.names)
        keys = kept.keys
        rows = r.rows.tolist()
        ts = _int_texts(r.ts_ms)
        vals = list(_texts(r.values, r.integer, kept.merges))
        for j, text in r.strings.items():
            vals[j] = orjson.dumps(text)
        qs = _Q_TEXT[r.quality].tolist()
        extra: dict[int, list[bytes]] = {}
        for j, text in r.errors.items():
            extra.setdefault(j, []).append(b',"err":' + orjson.dumps(text))
        if len(r.agg_pos):
            agg_integer = r.integer[r.agg_pos]
            cols = {
                key: (_int_texts(a) if key == "n" else _texts(a, agg_integer if key != "mean" else _NO_INTS))
                for key, a in r.agg.items()
            }
            labels = {key: b',"' + key.encode() + b'":' for key in cols}
            for k, (j, agg_keys) in enumerate(zip(r.agg_pos.tolist(), r.agg_keys)):
                extra.setdefault(j, []).extend(labels[key] + cols[key][k] for key in agg_keys)
        for mode, series in r.series.items():
            label = b',"' + mode.encode() + b'":{"ts":'
            for s, t, v, q in zip(series, *_series_texts(series, r.integer)):
                extra.setdefault(s.pos, []).append(b"".join((label, t, b',"v":', v, b',"q":', q, b"}")))
        out = []
        for j in sel:
            head = b"".join((keys[rows[j]], b'{"ts":', ts[j], b',"v":', vals[j], b',"q":', qs[j]))
            more = extra.get(j)
            out.append(head + b"".join(more) + b"}" if more else head + b"}")
        return out

    def reference(self, asset: str, seq: int, ts_ms: int, reduced: Reduced) -> bytes:
        """The full shape through Python dicts and orjson: the reference the array writer is checked against."""
        return orjson.dumps({"seq": seq, "ts": ts_ms, "asset": asset, "tags": entries(reduced)})

    def full(self, asset: str, seq: int | None, ts_ms: int, reduced: Reduced) -> bytes:
        """The full shape whatever ``shape`` is (the retained ``last`` message); no ``seq`` when None."""
        head = orjson.dumps({"ts": ts_ms, "asset": asset} if seq is None else {"seq": seq, "ts": ts_ms, "asset": asset})
        return self._objects(asset, reduced, head[:-1] + b',"tags":{', b"}}")

    def wire(self, topic: str, payload: bytes, *, replay: bool, compression: str) -> tuple[str, bytes]:
        if replay:
            payload = mark_replay(payload)
        return _wire(topic, payload, compression)

    def _compact(self, asset: str, seq: int, r: Reduced) -> bytes:
        if not len(r.rows):
            return orjson.dumps({"seq": seq, "ts": 0, "asset": asset, "tags": {}})
        msg_ts = int(r.ts_ms.max())
        bare = (r.quality == Quality.GOOD) & (msg_ts - r.ts_ms <= self.ts_tolerance_ms)
        if not r.plain:
            extra = np.zeros(len(r.rows), dtype=bool)
            extra[list(r.errors)] = True
            extra[r.agg_pos] = True
            for series in r.series.values():
                extra[[s.pos for s in series]] = True
            bare &= ~extra
        kept = self._of(asset, r.names)
        texts = list(_texts(r.values, r.integer, kept.merges))
        for j, s in r.strings.items():
            texts[j] = orjson.dumps(s)
        keys = kept.keys
        rows = r.rows.tolist()
        if bare.all():  # keys and values interleaved by slice assignment (in C), joined once
            n = len(rows)
            cells: list[bytes] = [b","] * (3 * n)
            cells[0::3] = keys if n == len(keys) else [keys[i] for i in rows]
            cells[1::3] = texts
            body = b"".join(cells[:-1])
        elif not bare.any():  # every tag an object: the full shape's writer
            body = self._objects(asset, r)
        else:
            others = np.flatnonzero(~bare).tolist()
            parts = [keys[i] + t for i, t in zip(rows, texts)]
            for j, member in zip(others, self._members(asset, r, others)):
                parts[j] = member
            body = b",".join(parts)
        head = orjson.dumps({"seq": seq, "ts": msg_ts, "asset": asset})
        return head[:-1] + b',"tags":{' + body + b"}}"


def mark_replay(payload: bytes) -> bytes:
    """A JSON message marked as replayed from the spool: ``"replay":true`` put first."""
    if payload[:1] != b"{":
        return payload
    return b'{"replay":true}' if payload == b"{}" else b'{"replay":true,' + payload[1:]


def expand(message: dict[str, Any]) -> dict[str, Any]:
    """Consumer side: a compact message with every bare value turned into the full ``{ts, v, q}`` object."""
    ts = message.get("ts")
    tags = {
        name: e if isinstance(e, dict) else {"ts": ts, "v": e, "q": "good"}
        for name, e in message.get("tags", {}).items()
    }
    return {**message, "tags": tags}


def tags_object(reduced: Reduced | None) -> dict[str, dict[str, Any]]:
    """The full-format ``tags`` object of a reduction ({} for None): what the reducer decided, as JSON data."""
    return {} if reduced is None else entries(reduced)
