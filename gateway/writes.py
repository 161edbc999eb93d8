"""Write-back: one value to one tag, from the HTTP API or an MQTT command, checked, executed, logged once.

The path of a write (see ``docs/write-back.md``):

1. :func:`perform` finds the asset and tag and checks the value against the tag's config
   (:func:`check_value`: ``writable``, a JSON number / boolean / text, finite, ``min``/``max``);
2. :meth:`gateway.source.AssetRuntime.write` hands it to the source task that owns the connection (writes
   never run concurrently with a poll; a disconnected asset refuses at once);
3. the driver's ``write(tag, value)`` encodes the value with the tag's type, scale, offset and byte order,
   writes it, reads it back and returns the read-back value (engineering units). It raises ``ValueError`` /
   ``TypeError`` for a value it cannot encode, :class:`TagNotWritable` for a tag the protocol cannot write,
   :class:`~gateway.driver.WriteError` when the device refuses the write or reads back something else,
   :class:`~gateway.driver.DeviceUnavailable` (or a timeout / ``OSError``) when the connection is gone;
4. :func:`perform` logs the write once with its origin and result, and returns a :class:`WriteOutcome`.

Every failure is a :class:`WriteFailed` with a ``kind`` (see :data:`KINDS`) that the API maps to an HTTP
status (:data:`gateway.api.HTTP_STATUS`) and MQTT results carry as ``code``. Nothing here sees the API token.
MQTT commands (parsing, freshness, results) and the JSON decoding shared with the API are in
:mod:`gateway.commands`; the inverse scaling drivers use is in :mod:`gateway.scaling`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.driver import DeviceUnavailable, WriteError
from gateway.logsafe import safe
from gateway.scaling import TagNotWritable, _is_number

if TYPE_CHECKING:
    from gateway.config.common import TagBase
    from gateway.source import AssetRuntime

log = logging.getLogger("gateway.writes")

#: every ``kind`` of :class:`WriteFailed`: what went wrong (the HTTP status of each is in gateway.api)
KINDS: dict[str, str] = {
    "unknown": "no such asset or tag",
    "not_writable": "writable is false, or the protocol cannot write this tag",
    "invalid": "wrong type, out of range, not encodable for the tag",
    "unavailable": "the device is disconnected, or the connection broke during the write",
    "busy": "too many writes queued for this asset",
    "device": "the device refused the write, or read back another value",
    "timeout": "no answer in time: the write may or may not have happened",
    "unsupported": "the driver cannot write at all",
    "malformed": "a body or MQTT command that is not valid JSON or lacks fields",
    "too_large": "a body or MQTT command larger than gateway.commands.MAX_COMMAND_BYTES",
    # MQTT commands only:
    "retained": "a retained command (a stale setpoint replayed by the broker)",
    "stale": 'past its "expires", or its "ts" is further from now than cmd_max_age',
}

#: longest text value accepted (Modbus strings are at most 250 characters)
MAX_TEXT = 1024


class WriteFailed(Exception):
    """A write that was refused, failed or could not be confirmed; ``kind`` is a key of :data:`KINDS`."""

    def __init__(self, kind: str, message: str, *, unexpected: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        #: a driver bug rather than a refusal (worth a traceback in the log)
        self.unexpected = unexpected


@dataclass(slots=True)
class WriteOutcome:
    """The result of one write, as reported to the caller and logged."""

    asset: str
    tag: str
    requested: Any
    ok: bool
    value: Any = None  # the read-back value (engineering units) when ok
    kind: str | None = None  # failure kind when not ok
    error: str | None = None
    elapsed_s: float = 0.0


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


@dataclass(frozen=True, slots=True)
class HugeInteger:
    """A JSON integer of more than :data:`gateway.commands.MAX_INT_DIGITS` digits, kept as its length only: no tag can take it,
    and ``int()`` of it (or ``float()`` in a driver) is slow or raises. Refused by :func:`check_value`."""

    digits: int


def check_value(tag: TagBase, value: Any, asset: str) -> None:
    """Refuse (:class:`WriteFailed`) a value the tag's config does not allow, before any I/O.

    The driver checks what only it knows (data type, raw range after scaling) when it encodes.
    """
    if not getattr(tag, "writable", False):
        raise WriteFailed(
            "not_writable", f"tag {tag.name!r} of asset {asset!r} is not writable (set writable: true in its config)"
        )
    if not _is_scalar(value):
        raise WriteFailed("invalid", f"value must be a number, true/false or text, not {_kind_of(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteFailed("invalid", f"value must be a finite number, not {value!r}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise WriteFailed("invalid", f"text of {len(value)} characters is longer than {MAX_TEXT}")
    low, high = getattr(tag, "min", None), getattr(tag, "max", None)
    if isinstance(value, bool) or (low is None and high is None):
        return
    number: float
    if _is_number(value):
        number = value
    else:
        try:
            number = float(value)
        except ValueError:
            raise WriteFailed("invalid", f"tag {tag.name!r} has limits; {_show(value)} is not a number") from None
    if low is not None and number < low:
        raise WriteFailed("invalid", f"{_show(value)} is below the minimum {low:g} of tag {tag.name!r}")
    if high is not None and number > high:
        raise WriteFailed("invalid", f"{_show(value)} is above the maximum {high:g} of tag {tag.name!r}")


def classify(exc: BaseException, *, asset: str, timeout: float) -> WriteFailed:
    """The :class:`WriteFailed` for an exception a driver's ``write()`` raised (see the module docstring)."""
    if isinstance(exc, WriteFailed):
        return exc
    if isinstance(exc, TimeoutError):
        return WriteFailed(
            "timeout", f"asset {asset!r}: no answer within {timeout:g} s; the write may or may not have been applied"
        )
    if isinstance(exc, TagNotWritable):
        return WriteFailed("not_writable", str(exc))
    if isinstance(exc, (ValueError, TypeError, OverflowError)):
        return WriteFailed("invalid", str(exc))
    if isinstance(exc, WriteError):
        return WriteFailed("device", str(exc))
    if isinstance(exc, NotImplementedError):
        return WriteFailed("unsupported", f"asset {asset!r}: {exc or 'this driver cannot write'}")
    if isinstance(exc, (DeviceUnavailable, OSError, ConnectionError)):
        return WriteFailed("unavailable", f"asset {asset!r}: connection lost during the write ({exc})")
    return WriteFailed(
        "device", f"asset {asset!r}: driver error during the write ({type(exc).__name__}: {exc})", unexpected=True
    )


def _show(value: Any, limit: int = 80) -> str:
    """A scalar as ``repr`` (quoted, escaped) cut to ``limit``; a container by its kind only (a deeply
    nested list must not be walked by ``repr``)."""
    if value is not None and not _is_scalar(value):
        return _kind_of(value)
    text = repr(value[: limit * 2] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind_of(value: Any) -> str:
    if isinstance(value, HugeInteger):
        return f"an integer of {value.digits} digits (out of range for every tag)"
    names = {dict: "an object", list: "a list", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def log_outcome(outcome: WriteOutcome, origin: str) -> None:
    """The one log line of a write: what, from where, and how it ended.

    Every part that came from outside (asset, tag, origin, error text) goes through
    :func:`gateway.logsafe.safe`: a newline in a tag name cannot start a line of its own.
    """
    requested = "" if outcome.requested is None else f" = {_show(outcome.requested)}"
    what = f"write {safe(outcome.asset, 80)}/{safe(outcome.tag, 80) or '?'}{requested} from {safe(origin, 300)}"
    ms = outcome.elapsed_s * 1000.0
    if outcome.ok:
        log.info("%s: ok, read back %s (%.0f ms)", what, _show(outcome.value), ms)
    else:
        log.warning("%s: refused (%s): %s (%.0f ms)", what, outcome.kind, safe(outcome.error, 500), ms)


async def perform(assets: Mapping[str, AssetRuntime], asset: str, tag: str, value: Any, *, origin: str) -> WriteOutcome:
    """Check and execute one write; never raises for a failed write (the outcome says why). Logged once.

    ``origin`` names where the write came from for the log, e.g. ``api 10.0.0.7:51234`` or
    ``mqtt acme/line1/press-3/cmd id=17``.
    """
    started = time.monotonic()
    # only a scalar is kept as "requested": a list or object is neither logged nor echoed
    outcome = WriteOutcome(asset=asset, tag=tag, requested=value if _is_scalar(value) else None, ok=False)
    try:
        runtime = assets.get(asset)
        if runtime is None:
            raise WriteFailed("unknown", f"unknown asset {_show(asset)}; known: {', '.join(assets)}")
        position = runtime.tag_index.get(tag)
        if position is None:
            raise WriteFailed("unknown", f"asset {asset!r} has no tag {_show(tag)}")
        check_value(runtime.tags[position], value, asset)
        outcome.value = await runtime.write(tag, value)
        outcome.ok = True
    except WriteFailed as exc:
        outcome.kind, outcome.error = exc.kind, exc.message
    except asyncio.CancelledError:
        outcome.kind, outcome.error = "cancelled", "the caller went away or the gateway is stopping"
        outcome.elapsed_s = time.monotonic() - started
        log_outcome(outcome, origin)
        raise
    outcome.elapsed_s = time.monotonic() - started
    log_outcome(outcome, origin)
    return outcome
