"""Sparkplug B 3.0 edge node of one uplink (``format: sparkplug``): topics, payloads and session state.

Pure apart from one small file (the ``bdSeq`` counter); no MQTT here. One :class:`EdgeNode` per uplink,
owned by its publisher / uplink, used only from the event loop thread. The caller contract:

- **before each connect** (every link, every reconnect): ``topic, payload = node.will()`` and set it as the
  MQTT last will (:data:`WILL_QOS` 1, not retained). It increments ``bdSeq`` (0..255) and writes it to
  ``<state_dir>/sparkplug-<key>.bdseq`` (a tiny atomic write: call it off the loop, e.g. in the thread that
  connects). The will carries ``bdSeq`` only; the next NBIRTH carries the same value.
- **once connected** (and host online, if a primary host is configured): subscribe to
  :meth:`EdgeNode.command_topics`, then publish :meth:`nbirth` (seq 0) and a :meth:`dbirth` per connected
  asset, QoS 0, not retained, before any data. The same again on NCMD ``Node Control/Rebirth``
  (:meth:`parse_ncmd`).
- **per data message** (when the publisher makes it): :meth:`ddata` (or the :class:`~gateway.encoders.Encoder`
  form :meth:`data`) turns a :class:`~gateway.reduce.Reduced` into a DDATA payload with aliases only.
  Its ``seq`` is a placeholder: the message may be spooled and sent much later.
- **per send** of a stored data payload: :meth:`wire` stamps it with the node's next ``seq`` and, when
  replayed from the spool, ``is_historical`` on every metric (:func:`stamp`), QoS 0.
- **device lost / back**: :meth:`ddeath`, then :meth:`dbirth` when it returns.
- **planned disconnect**: publish :meth:`death` (the will's bytes, QoS 1) before DISCONNECT.
- **commands**: :meth:`parse_dcmd` maps a DCMD to ``(asset, tag, value)`` writes, the value a Python
  int/float/bool/str per the metric's birth datatype; :func:`parse_state` reads a host's 3.0 STATE message.

``seq`` counts every node message except NDEATH (births and DDEATH get theirs when built, which is when they
are sent; data gets its own when stamped), 0..255 wrapping; NBIRTH restarts it at 0.

Mapping: device = asset id, metric name = tag name, datatype from the tag type (:func:`datatype_of`),
property ``engUnit`` from ``unit`` (births), property ``Quality`` (Int32: 192 good, 64 uncertain, 0 bad)
only when not good, bad or missing values as ``is_null``. Aliases are unique per node and depend only on
the configured asset / tag order (:class:`Aliases`), never on the reduction profile. Windowed aggregates
(``aggregate: [min, max, mean]``) are extra metrics ``<tag>/min``, ``<tag>/max``, ``<tag>/mean``.

Wire choices that follow the Tahu reference codecs where they and the specification differ: Int8/16/32
are sent in ``int_value`` sign-extended to 32 bits (-5 as Int16 is 4294967291); UInt32 is sent in
``long_value`` (the specification says uint32; Tahu's JS and Java codecs write and read the uint64
field); every data metric carries its ``datatype`` (Tahu's JS decoder needs it to find the value).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import orjson
from google.protobuf.message import DecodeError

from gateway.batch import Quality
from gateway.config.common import ReduceProfile, TagBase
from gateway.encoders.sparkplug_b_pb2 import Payload
from gateway.reduce import Reduced, effective_settings

log = logging.getLogger("gateway.sparkplug")

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
#: MQTT QoS / retain of each message kind (the specification's rules)
WILL_QOS = 1
WILL_RETAIN = False
BIRTH_QOS = 0
DATA_QOS = 0
#: ``Quality`` property values (Int32), indexed by :class:`gateway.batch.Quality`
QUALITY_CODES = np.array([192, 64, 0], dtype=np.int64)
AGGREGATES = ("min", "max", "mean")


class DataType(IntEnum):
    """The Sparkplug datatypes the gateway sends (values of ``Metric.datatype``)."""

    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12


_BY_TYPE = {
    "int8": DataType.Int8, "int16": DataType.Int16, "int32": DataType.Int32, "int64": DataType.Int64,
    "int": DataType.Int64,
    "uint8": DataType.UInt8, "uint16": DataType.UInt16, "uint32": DataType.UInt32, "uint64": DataType.UInt64,
    "float32": DataType.Float, "float": DataType.Float,
    "float64": DataType.Double, "double": DataType.Double, "number": DataType.Double,
    "bool": DataType.Boolean, "bit": DataType.Boolean, "coil": DataType.Boolean, "discrete": DataType.Boolean,
    "string": DataType.String,
}  # fmt: skip
_SIGNED32 = frozenset({DataType.Int8, DataType.Int16, DataType.Int32})
_INTEGER = frozenset({DataType.Int8, DataType.Int16, DataType.Int32, DataType.Int64, DataType.UInt8,
                      DataType.UInt16, DataType.UInt32, DataType.UInt64})
#: inclusive value range of each integer datatype
_RANGE = {
    DataType.Int8: (-(2**7), 2**7 - 1), DataType.Int16: (-(2**15), 2**15 - 1),
    DataType.Int32: (-(2**31), 2**31 - 1), DataType.Int64: (-(2**63), 2**63 - 1),
    DataType.UInt8: (0, 2**8 - 1), DataType.UInt16: (0, 2**16 - 1), DataType.UInt32: (0, 2**32 - 1),
    DataType.UInt64: (0, 2**64 - 1),
}  # fmt: skip

# how a datatype's value is carried: which Metric field
_INT, _LONG, _FLOAT, _DOUBLE, _BOOL, _STRING = range(6)
_FIELD_KIND = {
    DataType.Int8: _INT, DataType.Int16: _INT, DataType.Int32: _INT, DataType.UInt8: _INT,
    DataType.UInt16: _INT, DataType.UInt32: _LONG, DataType.Int64: _LONG, DataType.UInt64: _LONG,
    DataType.Float: _FLOAT, DataType.Double: _DOUBLE, DataType.Boolean: _BOOL, DataType.String: _STRING,
}  # fmt: skip
#: lookups indexed by datatype value: the field kind; the lowest value and the first value above the range
#: of integer types (exact as floats, also 2**63 and 2**64)
_KIND_OF = np.full(13, _DOUBLE, dtype=np.int64)
_LO_OF = np.full(13, -np.inf)
_ABOVE_OF = np.full(13, np.inf)
for _dt, _kind in _FIELD_KIND.items():
    _KIND_OF[_dt] = _kind
for _dt, (_lo, _hi) in _RANGE.items():
    _LO_OF[_dt], _ABOVE_OF[_dt] = _lo, _hi + 1


def datatype_of(tag: TagBase) -> DataType:
    """The Sparkplug datatype of a tag's published value, from its driver type name.

    Integer and bool types keep their type only without ``scale``/``offset`` (a scaled value is a Double,
    as the JSON payload writes it as a number with decimals); float32 is Float, string is String; a tag
    without a type (OPC UA: the server decides) or of an unknown type is Double.
    """
    dt = _BY_TYPE.get(str(getattr(tag, "type", "") or "").lower(), DataType.Double)
    if (dt in _INTEGER or dt == DataType.Boolean) and (tag.scale != 1 or tag.offset != 0):
        return DataType.Double
    return dt


def topic(group_id: str, kind: str, node_id: str, device_id: str | None = None) -> str:
    """``spBv1.0/<group>/<kind>/<node>[/<device>]``."""
    base = f"{NAMESPACE}/{group_id}/{kind}/{node_id}"
    return base if device_id is None else f"{base}/{device_id}"


def state_topic(host_id: str) -> str:
    """The Sparkplug 3.0 STATE topic of a primary host application."""
    return f"{NAMESPACE}/STATE/{host_id}"


@dataclass(frozen=True, slots=True)
class HostState:
    """A host application's STATE message: online or not, and its timestamp (Unix ms)."""

    host_id: str
    online: bool
    timestamp: int


def parse_state(topic_name: str, payload: bytes) -> HostState | None:
    """``spBv1.0/STATE/<host_id>`` with 3.0 JSON ``{"online": bool, "timestamp": ms}``; None when the topic
    is not a STATE topic or the payload is not that JSON (a 2.2 host's plain ``ONLINE``/``OFFLINE`` is not
    3.0 and is refused too)."""
    parts = topic_name.split("/")
    if len(parts) != 3 or parts[0] != NAMESPACE or parts[1] != "STATE" or not parts[2]:
        return None
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("online"), bool):
        return None
    ts = msg.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, int):
        return None
    return HostState(parts[2], msg["online"], ts)


def stamp(payload: bytes, seq: int, historical: bool, ts_ms: int | None = None) -> bytes:
    """A stored payload as sent: its ``seq`` set (0..255), ``is_historical = true`` on every metric when
    ``historical`` (a spool replay), the payload timestamp set to ``ts_ms`` (send time) when given.
    Raises ``ValueError`` when ``payload`` is not a Sparkplug B payload."""
    p = _parse(payload)
    if p is None:
        raise ValueError("not a Sparkplug B payload")
    p.seq = seq & 0xFF
    if ts_ms is not None:
        p.timestamp = ts_ms
    if historical:
        for m in p.metrics:
            m.is_historical = True
    return p.SerializeToString()


class HasTags(Protocol):
    """What the edge node needs of an asset (:class:`gateway.source.AssetRuntime` has it)."""

    tags: list[Any]


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One metric of the node as declared in its birth."""

    asset: str | None  # None: a node metric
    tag: str  # the tag (or node metric) name
    name: str  # the metric name (the tag name, or ``<tag>/min`` ...)
    alias: int
    datatype: DataType
    row: int  # the tag's index in its asset (-1: node metric)


@dataclass(frozen=True, slots=True)
class Write:
    """A DCMD write request, for the write checks (:mod:`gateway.writes`)."""

    asset: str
    tag: str
    value: int | float | bool | str


class Aliases:
    """Alias numbering, stable for a given config (asset order, then tag order), independent of reduction.

    ``1`` bdSeq, ``2`` Node Control/Rebirth, then one alias per tag of every asset (values, the frequent
    ones, get the small numbers: fewer varint bytes), then three per tag for ``/min``, ``/max``, ``/mean``.
    """

    NODE: ClassVar[dict[str, int]] = {BDSEQ: 1, REBIRTH: 2}

    def __init__(self, assets: Mapping[str, HasTags]) -> None:
        self.first: dict[str, int] = {}
        self.count: dict[str, int] = {}
        n = 0
        for asset_id, asset in assets.items():
            self.first[asset_id], self.count[asset_id] = n, len(asset.tags)
            n += len(asset.tags)
        self.total = n

    def value(self, asset_id: str) -> np.ndarray:
        """Per tag of the asset: the alias of its value metric."""
        return 3 + self.first[asset_id] + np.arange(self.count[asset_id], dtype=np.int64)

    def aggregate(self, asset_id: str, key: str) -> np.ndarray:
        """Per tag of the asset: the alias of its ``/<key>`` aggregate metric."""
        tag = self.first[asset_id] + np.arange(self.count[asset_id], dtype=np.int64)
        return 3 + self.total + 3 * tag + AGGREGATES.index(key)


class _Device:
    """One asset's metric table (arrays over its tags)."""

    def __init__(self, asset_id: str, tags: Sequence[TagBase], aliases: Aliases,
                 datatypes: Mapping[str, DataType]) -> None:
        self.id = asset_id
        self.tags = list(tags)
        self.names = [t.name for t in tags]
        self.units: list[str] = [getattr(t, "unit", None) or "" for t in tags]
        self.datatype = np.array([datatypes.get(t.name, datatype_of(t)) for t in tags], dtype=np.int64)
        self.alias = aliases.value(asset_id)
        self.agg_alias = {k: aliases.aggregate(asset_id, k) for k in AGGREGATES}
        self.agg_declared: list[tuple[str, ...]] = [()] * len(tags)
        self.by_alias: dict[int, MetricInfo] = {}
        self.by_name: dict[str, MetricInfo] = {}
        self.use_profile(None)

    def agg_datatype(self, i: int, key: str) -> DataType:
        dt = DataType(int(self.datatype[i]))
        if key == "mean" or dt in (DataType.Boolean, DataType.String):
            return DataType.Double
        return dt

    def use_profile(self, profile: ReduceProfile | None) -> None:
        """Declare the aggregate metrics ``profile`` (with the tags' own settings) gives; rebuild the maps."""
        self.agg_declared = [tuple(k for k in AGGREGATES if k in effective_settings(t, profile)["aggregate"])
                             for t in self.tags]
        infos = [MetricInfo(self.id, name, name, int(self.alias[i]), DataType(int(self.datatype[i])), i)
                 for i, name in enumerate(self.names)]
        for i, keys in enumerate(self.agg_declared):
            infos += [MetricInfo(self.id, self.names[i], f"{self.names[i]}/{k}", int(self.agg_alias[k][i]),
                                 self.agg_datatype(i, k), i) for k in keys]
        self.by_alias = {m.alias: m for m in infos}
        self.by_name = {m.name: m for m in infos}


def _set_values(p: Any, aliases: list[int], datatypes: np.ndarray, ts: list[int], values: np.ndarray,
                null: np.ndarray, names: list[str] | None = None) -> list[Any]:
    """Append one metric per element (vectorised conversion, one protobuf metric each); returns them."""
    n = len(aliases)
    out: list[Any] = []
    if n == 0:
        return out
    kinds = _KIND_OF[datatypes]
    integer = (kinds == _INT) | (kinds == _LONG)
    with np.errstate(invalid="ignore"):
        null = null | (~np.isfinite(values) & (kinds != _STRING))
        if integer.any():
            null |= integer & ((values < _LO_OF[datatypes]) | (values >= _ABOVE_OF[datatypes]))
        big = integer & ~null & (values >= 2.0**63)  # UInt64 beyond int64: exact from the float, below
    safe = np.where(null | ~integer | big, 0.0, values)
    ints = np.round(safe).astype(np.int64)
    # Int8/16/32 in the uint32 field: two's complement, sign-extended to 32 bits (Tahu's convention);
    # Int64 in the uint64 field: two's complement
    ints = np.where(kinds == _INT, ints & 0xFFFFFFFF, ints)
    int_list = ints.tolist()
    for j in np.flatnonzero(big | ((kinds == _LONG) & (ints < 0))).tolist():
        int_list[j] = (int(values[j]) if big[j] else int_list[j]) & 0xFFFFFFFFFFFFFFFF
    vals = values.tolist()
    kind_list = kinds.tolist()
    null_list = null.tolist()
    dts = datatypes.tolist()
    add = p.metrics.add
    for j in range(n):
        m = add()
        if names is not None:
            m.name = names[j]
        m.alias = aliases[j]
        m.timestamp = ts[j]
        m.datatype = dts[j]
        if null_list[j]:
            m.is_null = True
            out.append(m)
            continue
        k = kind_list[j]
        if k == _INT:
            m.int_value = int_list[j]
        elif k == _LONG:
            m.long_value = int_list[j]
        elif k == _DOUBLE:
            m.double_value = vals[j]
        elif k == _FLOAT:
            m.float_value = vals[j]
        elif k == _BOOL:
            m.boolean_value = vals[j] != 0
        else:
            m.is_null = True  # a String metric's text is set by the caller
        out.append(m)
    return out


def _quality(m: Any, code: int) -> None:
    props = m.properties
    props.keys.append("Quality")
    v = props.values.add()
    v.type = DataType.Int32
    v.int_value = code


def _unit(m: Any, unit: str) -> None:
    props = m.properties
    props.keys.append("engUnit")
    v = props.values.add()
    v.type = DataType.String
    v.string_value = unit


class EdgeNode:
    """The Sparkplug edge node of one uplink; see the module docstring for who calls what, when.

    ``assets``: asset id -> asset (anything with ``.tags``), in config order (aliases follow it);
    ``state_dir``: where ``bdSeq`` is kept (None: in memory only, for tools); ``key``: the file name part
    (default ``<group>-<node>``; use the uplink name when two uplinks share group and node id);
    ``profile``: the uplink's reduction profile (which tags carry aggregates); ``datatypes``: per asset, tag
    name -> datatype overrides (e.g. OPC UA tags whose server type is known).
    """

    def __init__(self, group_id: str, node_id: str, assets: Mapping[str, HasTags], state_dir: str | Path | None,
                 *, key: str | None = None, profile: ReduceProfile | None = None,
                 datatypes: Mapping[str, Mapping[str, DataType | int | str]] | None = None) -> None:
        for what, value in (("group_id", group_id), ("edge node id", node_id)):
            if not value or any(c in value for c in "/+#"):
                raise ValueError(f"Sparkplug {what} {value!r}: must be non-empty without '/', '+' or '#'")
        self.group_id = group_id
        self.node_id = node_id
        self.aliases = Aliases(assets)
        self.devices: dict[str, _Device] = {}
        for asset_id, asset in assets.items():
            over = {name: _datatype(v) for name, v in ((datatypes or {}).get(asset_id) or {}).items()}
            self.devices[asset_id] = _Device(asset_id, asset.tags, self.aliases, over)
        self.use_profile(profile)
        safe_key = re.sub(r"[^A-Za-z0-9_.-]", "_", key or f"{group_id}-{node_id}")
        self.bdseq_file = None if state_dir is None else Path(state_dir) / f"sparkplug-{safe_key}.bdseq"
        #: the bdSeq of the current / next session (None until the first :meth:`will`)
        self.bdseq: int | None = None
        self._last_bdseq = self._load_bdseq()
        self._seq = 0

    # -- setup ----------------------------------------------------------------------------------------
    def use_profile(self, profile: ReduceProfile | None) -> None:
        """The uplink's reduction profile (the active link's): which aggregate metrics the births declare.
        Aliases do not change; call it before the births of a connection."""
        for dev in self.devices.values():
            dev.use_profile(profile)

    def topic(self, kind: str, device_id: str | None = None) -> str:
        return topic(self.group_id, kind, self.node_id, device_id)

    def command_topics(self) -> list[str]:
        """The topic filters to subscribe to after each connect (NCMD, and DCMD of every device)."""
        return [self.topic("NCMD"), self.topic("DCMD") + "/+"]

    def metric(self, asset_id: str, name: str) -> MetricInfo | None:
        dev = self.devices.get(asset_id)
        return None if dev is None else dev.by_name.get(name)

    # -- session state --------------------------------------------------------------------------------
    def _load_bdseq(self) -> int | None:
        if self.bdseq_file is None:
            return None
        try:
            text = self.bdseq_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("sparkplug %s/%s: cannot read %s (%s); bdSeq starts at 0", self.group_id, self.node_id,
                        self.bdseq_file, exc)
            return None
        if text.isdigit() and int(text) <= 255:
            return int(text)
        log.warning("sparkplug %s/%s: %s holds %r, not 0..255; bdSeq starts at 0", self.group_id, self.node_id,
                    self.bdseq_file, text[:20])
        return None

    def will(self) -> tuple[str, bytes]:
        """The last will for the next connect: NDEATH with the new ``bdSeq`` (previous + 1, 0..255; 0 the very
        first time), which is also the bdSeq of the NBIRTH that follows. Persists it first (blocking, tiny)."""
        self.bdseq = 0 if self._last_bdseq is None else (self._last_bdseq + 1) & 0xFF
        self._last_bdseq = self.bdseq
        if self.bdseq_file is not None:
            try:
                self.bdseq_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.bdseq_file.with_name(self.bdseq_file.name + ".tmp")
                tmp.write_text(f"{self.bdseq}\n")
                os.replace(tmp, self.bdseq_file)
            except OSError as exc:  # the session still works; only a restart may repeat a bdSeq
                log.warning("sparkplug %s/%s: cannot save bdSeq to %s: %s", self.group_id, self.node_id,
                            self.bdseq_file, exc)
        return self.death()

    def death(self) -> tuple[str, bytes]:
        """NDEATH of the current session (the will's bytes): to publish, QoS 1, before a planned disconnect."""
        if self.bdseq is None:
            raise RuntimeError("will() must be called before connecting")
        p = Payload()
        m = p.metrics.add()
        m.name = BDSEQ
        m.datatype = DataType.Int64
        m.long_value = self.bdseq
        return self.topic("NDEATH"), p.SerializeToString()

    def next_seq(self) -> int:
        """The next ``seq`` (0..255, wrapping) of a node message."""
        s = self._seq
        self._seq = (s + 1) & 0xFF
        return s

    @property
    def seq(self) -> int:
        """The ``seq`` the next node message gets."""
        return self._seq

    # -- births and deaths (built when sent) -------------------------------------------------------------
    def nbirth(self, ts_ms: int | None = None) -> tuple[str, bytes]:
        """NBIRTH, seq 0: ``bdSeq`` (the will's) and ``Node Control/Rebirth`` (false), names and aliases."""
        if self.bdseq is None:
            raise RuntimeError("will() must be called before connecting")
        ts = _now_ms() if ts_ms is None else ts_ms
        self._seq = 0
        p = Payload(timestamp=ts, seq=self.next_seq())
        m = p.metrics.add(name=BDSEQ, alias=Aliases.NODE[BDSEQ], timestamp=ts, datatype=DataType.Int64)
        m.long_value = self.bdseq
        m = p.metrics.add(name=REBIRTH, alias=Aliases.NODE[REBIRTH], timestamp=ts, datatype=DataType.Boolean)
        m.boolean_value = False
        return self.topic("NBIRTH"), p.SerializeToString()

    def dbirth(self, asset_id: str, snap: Reduced | None, ts_ms: int | None = None) -> tuple[str, bytes]:
        """DBIRTH of an asset: every metric with name, alias, datatype, ``engUnit``; current values from
        ``snap`` (:func:`gateway.reduce.snapshot`), null (Quality bad) where a tag has no sample yet;
        declared aggregates as null metrics. Takes the next ``seq``."""
        dev = self.devices[asset_id]
        ts = _now_ms() if ts_ms is None else ts_ms
        n = len(dev.names)
        values = np.full(n, np.nan)
        quality = np.full(n, Quality.BAD, dtype=np.int64)
        sample_ts = np.full(n, ts, dtype=np.int64)
        strings: dict[int, str] = {}
        if snap is not None and len(snap):
            values[snap.rows] = snap.values
            quality[snap.rows] = snap.quality
            sample_ts[snap.rows] = snap.ts_ms
            strings = {int(snap.rows[j]): s for j, s in snap.strings.items()}
        p = Payload(timestamp=ts, seq=self.next_seq())
        null = quality == Quality.BAD
        ms = _set_values(p, dev.alias.tolist(), dev.datatype, sample_ts.tolist(), values, null, dev.names)
        _strings(ms, strings, dev.datatype)
        codes = QUALITY_CODES[quality].tolist()
        for i, m in enumerate(ms):
            if dev.units[i]:
                _unit(m, dev.units[i])
            if codes[i] != 192:
                _quality(m, codes[i])
        for i, keys in enumerate(dev.agg_declared):
            for k in keys:
                m = p.metrics.add(name=f"{dev.names[i]}/{k}", alias=int(dev.agg_alias[k][i]), timestamp=ts,
                                  datatype=dev.agg_datatype(i, k), is_null=True)
                if dev.units[i]:
                    _unit(m, dev.units[i])
        return self.topic("DBIRTH", asset_id), p.SerializeToString()

    def ddeath(self, asset_id: str, ts_ms: int | None = None) -> tuple[str, bytes]:
        """DDEATH of an asset whose device is lost; takes the next ``seq``."""
        if asset_id not in self.devices:
            raise KeyError(asset_id)
        p = Payload(timestamp=_now_ms() if ts_ms is None else ts_ms, seq=self.next_seq())
        return self.topic("DDEATH", asset_id), p.SerializeToString()

    # -- data (built when made, stamped when sent) ------------------------------------------------------
    def ddata(self, asset_id: str, reduced: Reduced, ts_ms: int | None = None) -> tuple[str, bytes]:
        """DDATA of an asset's due tags (aliases only, no names): each tag's newest sample (its series'
        samples first for raw / lttb / swinging-door tags), then its aggregates; null for bad or missing
        values, ``Quality`` when not good. ``seq`` is left 0 for :meth:`wire` / :func:`stamp`."""
        dev = self.devices[asset_id]
        p = Payload(timestamp=_now_ms() if ts_ms is None else ts_ms, seq=0)
        rows = reduced.rows
        if not len(rows):
            return self.topic("DDATA", asset_id), p.SerializeToString()
        if reduced.series:
            self._series(p, dev, reduced)
        else:
            self._rows(p, dev, reduced, np.arange(len(rows)))
        if len(reduced.agg_pos):
            self._aggregates(p, dev, reduced)
        return self.topic("DDATA", asset_id), p.SerializeToString()

    def _rows(self, p: Any, dev: _Device, r: Reduced, pos: np.ndarray) -> None:
        rows = r.rows[pos]
        q = r.quality[pos].astype(np.int64)
        ms = _set_values(p, dev.alias[rows].tolist(), dev.datatype[rows], r.ts_ms[pos].tolist(), r.values[pos],
                         q == Quality.BAD)
        if r.strings:
            at = {int(j): k for k, j in enumerate(pos.tolist())}
            _strings(ms, {at[j]: s for j, s in r.strings.items() if j in at}, dev.datatype[rows])
        if (q != Quality.GOOD).any():
            codes = QUALITY_CODES[q]
            for k in np.flatnonzero(q != Quality.GOOD).tolist():
                _quality(ms[k], int(codes[k]))

    def _series(self, p: Any, dev: _Device, r: Reduced) -> None:
        """Rows with a window: every sample of it in time order, then the newest sample if it is newer."""
        windows: dict[int, Any] = {}
        for series in r.series.values():
            for s in series:
                windows[s.pos] = s
        plain = [j for j in range(len(r.rows)) if j not in windows]
        if plain:
            self._rows(p, dev, r, np.array(plain, dtype=np.int64))
        for j, s in sorted(windows.items()):
            i = int(r.rows[j])
            n = len(s.values)
            q = s.quality.astype(np.int64)
            ms = _set_values(p, [int(dev.alias[i])] * n, np.full(n, dev.datatype[i]), s.ts_ms.tolist(), s.values,
                             q == Quality.BAD)
            for k in np.flatnonzero(q != Quality.GOOD).tolist():
                _quality(ms[k], int(QUALITY_CODES[q[k]]))
            if n == 0 or int(r.ts_ms[j]) > int(s.ts_ms[-1]):
                self._rows(p, dev, r, np.array([j], dtype=np.int64))

    def _aggregates(self, p: Any, dev: _Device, r: Reduced) -> None:
        for k, j in enumerate(r.agg_pos.tolist()):
            i = int(r.rows[j])
            declared = dev.agg_declared[i]
            keys = [key for key in r.agg_keys[k] if key in declared]
            if not keys:
                continue
            vals = np.array([r.agg[key][k] for key in keys], dtype=np.float64)
            dts = np.array([dev.agg_datatype(i, key) for key in keys], dtype=np.int64)
            _set_values(p, [int(dev.agg_alias[key][i]) for key in keys], dts, [int(r.ts_ms[j])] * len(keys), vals,
                        np.zeros(len(keys), dtype=bool))

    def data(self, asset: str, seq: int, ts_ms: int, reduced: Reduced) -> bytes:
        """The :class:`~gateway.encoders.Encoder` form of :meth:`ddata` (the publisher's ``seq`` is not
        Sparkplug's: it is set at send time); the topic is ``self.topic("DDATA", asset)``."""
        return self.ddata(asset, reduced, ts_ms)[1]

    def wire(self, topic_name: str, payload: bytes, *, replay: bool, compression: str = "none") -> tuple[str, bytes]:
        """Send time of a stored data payload: the next ``seq``, ``is_historical`` when ``replay``, the send
        time as payload timestamp. Sparkplug payloads are never compressed (hosts would not read them)."""
        return topic_name, stamp(payload, self.next_seq(), replay, _now_ms())

    # -- commands ---------------------------------------------------------------------------------------
    def parse_ncmd(self, payload: bytes) -> bool:
        """True when an NCMD asks for a rebirth (``Node Control/Rebirth`` true, by name or alias)."""
        p = _parse(payload)
        if p is None:
            return False
        for m in p.metrics:
            if (m.name == REBIRTH or (not m.name and m.alias == Aliases.NODE[REBIRTH])) \
                    and m.WhichOneof("value") == "boolean_value" and m.boolean_value:
                return True
        return False

    def device_of(self, topic_name: str) -> str | None:
        """The asset id of a DCMD topic of this node, else None."""
        prefix = self.topic("DCMD") + "/"
        if not topic_name.startswith(prefix):
            return None
        device = topic_name[len(prefix):]
        return device if device in self.devices else None

    def parse_dcmd(self, asset_id: str, payload: bytes) -> tuple[list[Write], list[str]]:
        """A DCMD's writes, each metric found by name or alias among the asset's tag metrics, its value
        converted by the birth datatype (Int8/16/32 from the sign-extended uint32, Int64 from two's
        complement, Float at float32 precision); and one error text per metric that is refused (unknown,
        an aggregate, null, a value that does not fit the datatype). Writability and limits are the write
        checks' business."""
        p = _parse(payload)
        if p is None:
            return [], ["not a Sparkplug B payload"]
        dev = self.devices.get(asset_id)
        if dev is None:
            return [], [f"unknown device {asset_id!r}"]
        writes: list[Write] = []
        errors: list[str] = []
        for m in p.metrics:
            info = dev.by_name.get(m.name) if m.name else dev.by_alias.get(m.alias) if m.HasField("alias") else None
            label = m.name or f"alias {m.alias}"
            if info is None or info.name != info.tag:
                errors.append(f"{label}: no such writable metric on {asset_id}")
                continue
            value, err = _command_value(m, info.datatype)
            if err is not None:
                errors.append(f"{label}: {err}")
            else:
                writes.append(Write(asset_id, info.tag, value))
        return writes, errors


def _strings(ms: list[Any], strings: Mapping[int, str], datatypes: np.ndarray) -> None:
    """Set the text of String metrics (position in ``ms`` -> text); other positions stay null."""
    for k, text in strings.items():
        if int(datatypes[k]) == DataType.String:
            m = ms[k]
            m.ClearField("is_null")
            m.string_value = text


def _datatype(v: DataType | int | str) -> DataType:
    if isinstance(v, str):
        return DataType[v] if v in DataType.__members__ else _BY_TYPE[v.lower()]
    return DataType(int(v))


def _parse(payload: bytes) -> Any:
    try:
        return Payload.FromString(payload)
    except (DecodeError, ValueError, TypeError):
        return None


def _command_value(m: Any, dt: DataType) -> tuple[Any, str | None]:
    """The Python value of a command metric for a tag of datatype ``dt`` (lenient on the field used)."""
    if m.is_null:
        return None, "null value"
    which = m.WhichOneof("value")
    if which is None:
        return None, "no value"
    raw = getattr(m, which)
    if dt in _INTEGER:
        if which in ("int_value", "long_value"):
            v = int(raw)
            if which == "int_value" and dt in _SIGNED32 and v >= 2**31:
                v -= 2**32
            elif which == "long_value" and dt in (DataType.Int64, *_SIGNED32) and v >= 2**63:
                v -= 2**64
        elif which in ("float_value", "double_value") and float(raw).is_integer() or which == "boolean_value":
            v = int(raw)
        else:
            return None, f"{which} is not a {dt.name} value"
        lo, hi = _RANGE[dt]
        if not lo <= v <= hi:
            return None, f"{v} is out of the {dt.name} range"
        return v, None
    if dt == DataType.Boolean:
        if which == "boolean_value":
            return bool(raw), None
        if which in ("int_value", "long_value") and raw in (0, 1):
            return bool(raw), None
        return None, f"{which} is not a Boolean value"
    if dt == DataType.String:
        if which == "string_value":
            return str(raw), None
        return None, f"{which} is not a String value"
    if which in ("float_value", "double_value", "int_value", "long_value"):
        x = float(str(np.float32(raw))) if which == "float_value" else float(raw)
        if not math.isfinite(x):
            return None, "not a finite number"
        return x, None
    return None, f"{which} is not a {dt.name} value"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def payload_json(payload: bytes) -> dict[str, Any]:
    """Debug / tools: a payload as a dict (protobuf's JSON mapping)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(Payload.FromString(payload), preserving_proto_field_name=True)

