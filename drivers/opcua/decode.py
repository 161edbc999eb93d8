"""Turn the DataValues of one Read response into the columns of a :class:`~gateway.batch.Batch`.

The only per-value Python work is one pass per column over asyncua's DataValue objects (which the
library has already built); everything after that is NumPy over the whole response.

Error codes (``Batch.errors``, int32):

- an OPC UA status code (bad or uncertain), reinterpreted as int32, with its name as text
  (e.g. ``BadNodeIdUnknown``);
- driver codes below 0x10000 (never a valid OPC UA status code, whose low 16 bits are info bits and
  whose severity bits are set for bad/uncertain) for values the gateway cannot store, see below.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
from asyncua import ua
from asyncua.ua import status_codes

from gateway.batch import Batch, Quality

#: Driver code: the tag's ``nsu=`` namespace URI is not in the server's NamespaceArray.
ERR_UNKNOWN_NAMESPACE = 1
#: Driver code: the Value is Null although the status is not bad.
ERR_NULL_VALUE = 2
#: Driver code: the tag's browse path does not lead to a node on this server.
ERR_BROWSE_PATH = 3
#: Driver code (subscribe mode): the server refused to create the tag's monitored item.
ERR_NOT_MONITORED = 4
#: Driver codes ``ERR_UNSUPPORTED_TYPE + VariantType`` / ``ERR_ARRAY + VariantType``.
ERR_UNSUPPORTED_TYPE = 0x1000
ERR_ARRAY = 0x2000

_NUMERIC_TYPES = np.array(
    [
        ua.VariantType.Boolean,
        ua.VariantType.SByte,
        ua.VariantType.Byte,
        ua.VariantType.Int16,
        ua.VariantType.UInt16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
        ua.VariantType.Float,
        ua.VariantType.Double,
    ],
    dtype=np.int32,
)
_TEXT_TYPES = np.array([ua.VariantType.String, ua.VariantType.LocalizedText], dtype=np.int32)
_ARRAY_FLAG = 0x100
_UNIX_EPOCH_FLOOR_S = 86400.0  # timestamps before 1970-01-02 are "not set" (OPC UA encodes that as 1601)


def _status(dv: ua.DataValue) -> int:
    sc = dv.StatusCode
    return 0 if sc is None else sc.value


def _kind(variant: ua.Variant | None) -> int:
    if variant is None:
        return int(ua.VariantType.Null)
    return variant.VariantType.value | (_ARRAY_FLAG if variant.is_array else 0)


def _seconds(dv: ua.DataValue) -> float:
    t: datetime | None = dv.SourceTimestamp
    if t is None or t.year < 1971:
        t = dv.ServerTimestamp
        if t is None or t.year < 1971:
            return np.nan
    return t.timestamp()


def _text(value: object) -> str:
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    return "" if value is None else str(value)


def status_text(code: int) -> str:
    """The name of an OPC UA status code, e.g. ``BadNodeIdUnknown``; hex added when not a plain known code."""
    name = status_codes.code_to_name_doc.get(code, (None,))[0]
    if name is not None:
        return name
    base = status_codes.code_to_name_doc.get(code & 0xFFFF0000, (None,))[0]
    return f"{base or ua.StatusCode(code).name} (0x{code:08X})"


def _type_name(kind: int) -> str:
    code = kind & ~_ARRAY_FLAG
    try:
        return ua.VariantType(code).name
    except ValueError:
        return f"VariantType {code}"


def fill(batch: Batch, positions: np.ndarray, dvs: Sequence[ua.DataValue], now_ns: int) -> np.ndarray:
    """Write the DataValues ``dvs`` into ``batch`` at plan ``positions`` (one DataValue per position).

    Values stay raw (no scale/offset). ``quality`` follows the status code's severity (top two bits:
    00 good, 01 uncertain, 10/11 bad). Bad values are NaN. Strings and LocalizedTexts go to
    ``batch.strings`` (value NaN). Arrays and other types are marked bad with a driver code.
    ``ts`` is the SourceTimestamp, else the ServerTimestamp, else ``now_ns``.

    Returns each value's VariantType code (``| 0x100`` for an array, Null without a value), for
    :func:`mark_types`.
    """
    n = len(dvs)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    variants = [dv.Value for dv in dvs]
    status = np.fromiter(map(_status, dvs), dtype=np.uint32, count=n)
    kind = np.fromiter(map(_kind, variants), dtype=np.int32, count=n)
    seconds = np.fromiter(map(_seconds, dvs), dtype=np.float64, count=n)

    severity = status >> 30
    quality = np.where(severity == 0, Quality.GOOD, np.where(severity == 1, Quality.UNCERTAIN, Quality.BAD))
    has_value = quality != Quality.BAD
    numeric = has_value & np.isin(kind, _NUMERIC_TYPES)
    text = has_value & np.isin(kind, _TEXT_TYPES)
    unsupported = has_value & ~numeric & ~text

    values = np.full(n, np.nan)
    idx = np.flatnonzero(numeric)
    values[idx] = np.fromiter((variants[i].Value for i in idx.tolist()), dtype=np.float64, count=len(idx))

    ts = np.full(n, now_ns, dtype=np.int64)
    stamped = np.flatnonzero(seconds >= _UNIX_EPOCH_FLOOR_S)
    ts[stamped] = np.rint(seconds[stamped] * 1e6).astype(np.int64) * 1000

    errors = np.where(quality == Quality.GOOD, 0, status.view(np.int32)).astype(np.int32)
    for code in np.unique(status[quality != Quality.GOOD]).tolist():
        batch.error_text[int(np.uint32(code).view(np.int32))] = status_text(code)

    for k in np.unique(kind[unsupported]).tolist():
        if k == ua.VariantType.Null:
            code, msg = ERR_NULL_VALUE, "the server returned no value (Null)"
        elif k & _ARRAY_FLAG:
            code = ERR_ARRAY + (k & ~_ARRAY_FLAG)
            msg = f"the value is an array of {_type_name(k)}; only scalar values are supported"
        else:
            code = ERR_UNSUPPORTED_TYPE + k
            msg = f"values of type {_type_name(k)} are not supported (numbers, booleans and strings are)"
        hit = unsupported & (kind == k)
        quality[hit] = Quality.BAD
        errors[hit] = code
        batch.error_text[code] = msg

    batch.values[positions] = values
    batch.quality[positions] = quality
    batch.errors[positions] = errors
    batch.ts[positions] = ts
    plan_pos = positions.tolist()
    for i in np.flatnonzero(text).tolist():
        batch.strings[plan_pos[i]] = _text(variants[i].Value)
    return kind


#: the numeric types that are not floating point: published as JSON integers on an unscaled tag
_INTEGER_KINDS = _NUMERIC_TYPES[~np.isin(_NUMERIC_TYPES, [ua.VariantType.Float, ua.VariantType.Double])]


def mark_types(
    float32: np.ndarray, integer: np.ndarray | None, unscaled: np.ndarray | None, tags: np.ndarray, kind: np.ndarray
) -> None:
    """Declare the publish form of ``tags`` (plan positions) from their values' types: ``float32[tags]`` is
    True for a scalar Float; ``integer[tags]`` for a Boolean or an integer type on a tag without scale or
    offset (``unscaled``); tags that came without a value (Null) keep their flags.

    The driver's ``float32_tags`` and ``integer_tags`` are these arrays: the gateway publishes Float tags as
    the shortest decimal that reads back as the same float32 (``1.4669616``, not ``1.46696162223816``), like
    Modbus float32, and integer tags as JSON integers (``54321``, not ``54321.0``).
    """
    known = kind != int(ua.VariantType.Null)
    at, k = tags[known], kind[known]
    float32[at] = k == int(ua.VariantType.Float)
    if integer is not None and unscaled is not None:
        integer[at] = np.isin(k, _INTEGER_KINDS) & unscaled[at]
