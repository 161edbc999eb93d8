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

Every failure is a :class:`WriteFailed` with a ``kind`` that the API maps to an HTTP status
(:data:`HTTP_STATUS`) and MQTT results carry as ``code``. Nothing here sees the API token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.driver import DeviceUnavailable, WriteError

if TYPE_CHECKING:
    from gateway.config.common import TagBase
    from gateway.source import AssetRuntime

log = logging.getLogger("gateway.writes")

#: kind of failure -> HTTP status of the API answer
HTTP_STATUS: dict[str, int] = {
    "unknown": 404,  # no such asset or tag
    "not_writable": 403,  # writable is false, or the protocol cannot write this tag
    "invalid": 422,  # wrong type, out of range, not encodable for the tag
    "unavailable": 503,  # the device is disconnected, or the connection broke during the write
    "busy": 503,  # too many writes queued for this asset
    "device": 502,  # the device refused the write, or read back another value
    "timeout": 504,  # no answer in time: the write may or may not have happened
    "unsupported": 501,  # the driver cannot write at all
    "malformed": 400,  # an MQTT command that is not valid JSON or lacks fields
}

#: longest text value accepted (Modbus strings are at most 250 characters)
MAX_TEXT = 1024
#: largest MQTT command payload accepted
MAX_COMMAND_BYTES = 65536


class TagNotWritable(Exception):
    """Raised by a driver's ``write()`` for a tag its protocol cannot write (e.g. a Modbus input register)."""


class WriteFailed(Exception):
    """A write that was refused, failed or could not be confirmed; ``kind`` is a key of :data:`HTTP_STATUS`."""

    def __init__(self, kind: str, message: str, *, unexpected: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        #: a driver bug rather than a refusal (worth a traceback in the log)
        self.unexpected = unexpected

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.kind, 500)


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

    @property
    def http_status(self) -> int:
        return 200 if self.ok else HTTP_STATUS.get(self.kind or "", 500)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------ inverse scaling, shared by the drivers

#: relative rounding error of the inverse scaling that is tolerated ((21.5 + 50) / 0.1 = 714.99999999999989)
RAW_TOLERANCE = 1e-9


def _scaled(tag: TagBase) -> bool:
    return tag.scale != 1.0 or tag.offset != 0.0


def raw_bool(tag: TagBase, value: Any, type_name: str) -> bool:
    """``true``/``false``, or a number whose raw value (after scale/offset) is 1 or 0."""
    if isinstance(value, bool):
        return value
    if _is_number(value) and (value - tag.offset) / tag.scale in (0, 1):
        return bool((value - tag.offset) / tag.scale)
    raise ValueError(f"tag {tag.name!r} is a {type_name}: write true or false (or 1 / 0), not {_show(value)}")


def raw_integer(tag: TagBase, value: Any, type_name: str, low: int, high: int) -> int:
    """``(value - offset) / scale`` as a whole number within ``low..high``; ``ValueError`` otherwise.

    Nothing is rounded silently: ``1.5`` to an integer, or ``21.53`` with ``scale: 0.1``, is refused. Exact for
    JSON integers when unscaled (also for decimal strings of 64-bit types, for clients whose numbers are doubles).
    """
    if isinstance(value, str) and high > (1 << 32):
        text = value.strip()
        if not text.lstrip("+-").isdigit():
            raise ValueError(f"tag {tag.name!r} is a {type_name}: {_show(value)} is not a whole decimal number")
        value = int(text)
    if not _is_number(value):
        raise ValueError(f"tag {tag.name!r} is a {type_name}: write a number, not {_show(value)}")
    if isinstance(value, int) and not _scaled(tag):
        raw: int | float = value
    else:
        if not math.isfinite(value):
            raise ValueError(f"tag {tag.name!r}: {value!r} is not a finite number")
        exact = (value - tag.offset) / tag.scale
        raw = round(exact)
        if abs(exact - raw) > RAW_TOLERANCE * max(1.0, abs(exact)):
            how = f" (raw value {exact:.6g} after scale {tag.scale:g}, offset {tag.offset:g})" if _scaled(tag) else ""
            raise ValueError(f"tag {tag.name!r} is a {type_name}: {value!r} is not a whole number{how}")
    if not low <= raw <= high:
        how = f" (raw value {raw} after scale {tag.scale:g}, offset {tag.offset:g})" if _scaled(tag) else ""
        raise ValueError(f"tag {tag.name!r}: {value!r} is outside the {type_name} range {low}..{high}{how}")
    return int(raw)


def raw_float(tag: TagBase, value: Any, type_name: str, max_abs: float) -> float:
    """``(value - offset) / scale`` as a finite float of magnitude at most ``max_abs``; ``ValueError`` otherwise."""
    if not _is_number(value):
        raise ValueError(f"tag {tag.name!r} is a {type_name}: write a number, not {_show(value)}")
    raw = (float(value) - tag.offset) / tag.scale
    if not math.isfinite(raw):
        raise ValueError(f"tag {tag.name!r}: {value!r} is not a finite number")
    if abs(raw) > max_abs:
        raise ValueError(f"tag {tag.name!r}: {value!r} is outside the {type_name} range +-{max_abs:.8g}")
    return raw


def engineering(tag: TagBase, raw: int | float) -> int | float:
    """``raw * scale + offset`` without the binary noise of scaling (71.5 - 50 gives 21.5, not 21.500000000000004);
    unscaled integers stay exact ``int``."""
    if not _scaled(tag):
        return raw
    return float(f"{raw * tag.scale + tag.offset:.15g}")


def check_value(tag: TagBase, value: Any, asset: str) -> None:
    """Refuse (:class:`WriteFailed`) a value the tag's config does not allow, before any I/O.

    The driver checks what only it knows (data type, raw range after scaling) when it encodes.
    """
    if not getattr(tag, "writable", False):
        raise WriteFailed(
            "not_writable", f"tag {tag.name!r} of asset {asset!r} is not writable (set writable: true in its config)"
        )
    if value is None or not isinstance(value, (bool, int, float, str)):
        raise WriteFailed("invalid", f"value must be a number, true/false or text, not {_show(value)}")
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
    if isinstance(exc, (ValueError, TypeError)):
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
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_outcome(outcome: WriteOutcome, origin: str) -> None:
    """The one log line of a write: what, from where, and how it ended."""
    what = f"write {outcome.asset}/{outcome.tag} = {_show(outcome.requested)} from {origin}"
    ms = outcome.elapsed_s * 1000.0
    if outcome.ok:
        log.info("%s: ok, read back %s (%.0f ms)", what, _show(outcome.value), ms)
    else:
        log.warning("%s: refused (%s): %s (%.0f ms)", what, outcome.kind, outcome.error, ms)


async def perform(
    assets: Mapping[str, AssetRuntime], asset: str, tag: str, value: Any, *, origin: str
) -> WriteOutcome:
    """Check and execute one write; never raises for a failed write (the outcome says why). Logged once.

    ``origin`` names where the write came from for the log, e.g. ``api 10.0.0.7:51234`` or
    ``mqtt acme/line1/press-3/cmd id=17``.
    """
    started = time.monotonic()
    outcome = WriteOutcome(asset=asset, tag=tag, requested=value, ok=False)
    try:
        runtime = assets.get(asset)
        if runtime is None:
            raise WriteFailed("unknown", f"unknown asset {asset!r}; known: {', '.join(assets)}")
        position = runtime.tag_index.get(tag)
        if position is None:
            raise WriteFailed("unknown", f"asset {asset!r} has no tag {tag!r}")
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


# -------------------------------------------------------------------------------------------- MQTT commands


class BadCommand(ValueError):
    """An MQTT command that cannot be executed; ``request_id`` is set when the payload carried one."""

    def __init__(self, message: str, request_id: Any = None, has_id: bool = False) -> None:
        super().__init__(message)
        self.request_id, self.has_id = request_id, has_id


@dataclass(frozen=True, slots=True)
class Command:
    request_id: Any  # str, int or None; echoed in the result
    tag: str
    value: Any
    by: str | None  # self-declared sender, logged (not verified)


def parse_command(payload: bytes) -> Command:
    """``{"tag": ..., "value": ..., "id": ...}`` (``id`` optional, ``by`` optional) -> :class:`Command`."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise BadCommand(f"command of {len(payload)} bytes is larger than {MAX_COMMAND_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadCommand(f"command is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadCommand('command must be a JSON object: {"tag": ..., "value": ..., "id": ...}')
    has_id = "id" in doc
    request_id = doc.get("id")
    if has_id and (isinstance(request_id, bool) or not isinstance(request_id, (str, int, type(None)))):
        raise BadCommand("id must be a string or an integer", None, has_id=False)
    if isinstance(request_id, str) and len(request_id) > 128:
        raise BadCommand("id is longer than 128 characters", None, has_id=False)
    tag = doc.get("tag")
    if not isinstance(tag, str) or not tag:
        raise BadCommand('command needs "tag": the name of the tag to write', request_id, has_id)
    if "value" not in doc:
        raise BadCommand('command needs "value": the value to write', request_id, has_id)
    unknown = sorted(set(doc) - {"tag", "value", "id", "by"})
    if unknown:
        raise BadCommand(f"unknown field(s) {', '.join(unknown)}; a command has tag, value, id and by", request_id, has_id)
    by = doc.get("by")
    return Command(request_id, tag, doc["value"], str(by)[:64] if by is not None else None)


Publish = Callable[..., None]


class MqttCommands:
    """Executes write commands arriving on ``{namespace}/{asset}/cmd``; answers on ``.../cmd/result``.

    :meth:`on_message` is the uplink's message callback (runs on the event loop). Each command becomes a
    task (tracked, cancelled by :meth:`close`). Retained commands are never executed: a stale setpoint must
    not be replayed when the gateway reconnects. A command that cannot be parsed is answered with an error
    when its ``id`` could be read, and only logged otherwise.
    """

    def __init__(self, assets: Mapping[str, AssetRuntime], namespace: str, publish: Publish) -> None:
        self.assets = assets
        self.namespace = namespace
        self._publish = publish
        self._tasks: set[asyncio.Task[None]] = set()

    def topic(self, asset: str) -> str:
        return f"{self.namespace}/{asset}/cmd"

    def result_topic(self, asset: str) -> str:
        return f"{self.namespace}/{asset}/cmd/result"

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        asset = topic.removeprefix(self.namespace + "/").removesuffix("/cmd")
        try:
            cmd = parse_command(payload)
            if retained:
                raise BadCommand(
                    "retained commands are not executed (publish commands without the retain flag)",
                    cmd.request_id, has_id=True,
                )
        except BadCommand as exc:
            origin = f"mqtt {topic}" + (f" id={exc.request_id!r}" if exc.has_id else "")
            if exc.has_id:
                outcome = WriteOutcome(asset, "?", None, ok=False, kind="malformed", error=str(exc))
                log_outcome(outcome, origin)
                self._answer(asset, exc.request_id, outcome)
            else:
                log.warning("ignored MQTT command on %s (no id to answer to): %s", topic, exc)
            return
        task = asyncio.get_running_loop().create_task(self._execute(asset, topic, cmd), name=f"cmd:{asset}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, asset: str, topic: str, cmd: Command) -> None:
        origin = f"mqtt {topic}" + (f" id={cmd.request_id!r}" if cmd.request_id is not None else "")
        if cmd.by:
            origin += f" by {cmd.by!r} (unverified)"
        outcome = await perform(self.assets, asset, cmd.tag, cmd.value, origin=origin)
        self._answer(asset, cmd.request_id, outcome)

    def _answer(self, asset: str, request_id: Any, outcome: WriteOutcome) -> None:
        body = {
            "id": request_id,
            "ok": outcome.ok,
            "asset": asset,
            "tag": outcome.tag,
            "value": outcome.value,
            "requested": outcome.requested,
            "error": outcome.error,
            "code": outcome.kind,
            "ts": time.time_ns() // 1_000_000,
        }
        self._publish(self.result_topic(asset), json.dumps(body, separators=(",", ":")), qos=1, retain=False)

    async def close(self) -> None:
        """Cancel commands still in flight (their writes are abandoned if not yet started)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
