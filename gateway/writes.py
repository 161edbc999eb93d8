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
from gateway.logsafe import safe
from gateway.scaling import TagNotWritable, _is_number

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
    "malformed": 400,  # a body or MQTT command that is not valid JSON or lacks fields
    "too_large": 413,  # a body or MQTT command larger than MAX_COMMAND_BYTES
    # MQTT commands only:
    "retained": 409,  # a retained command (a stale setpoint replayed by the broker)
    "stale": 409,  # past its "expires", or its "ts" is further from now than cmd_max_age
}

#: longest text value accepted (Modbus strings are at most 250 characters)
MAX_TEXT = 1024
#: largest MQTT command payload and API write body accepted, in bytes
MAX_COMMAND_BYTES = 65536
#: integers with more digits are refused while parsing (the largest 64-bit value has 20 digits); a JSON
#: integer of 10**400 must never reach a driver's float()
MAX_INT_DIGITS = 24
#: default of how old (``ts``) an MQTT command may be, in seconds
CMD_MAX_AGE = 10.0


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


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


@dataclass(frozen=True, slots=True)
class HugeInteger:
    """A JSON integer of more than :data:`MAX_INT_DIGITS` digits, kept as its length only: no tag can take it,
    and ``int()`` of it (or ``float()`` in a driver) is slow or raises. Refused by :func:`check_value`."""

    digits: int


def _parse_int(text: str) -> int | HugeInteger:
    digits = len(text.lstrip("-"))
    return HugeInteger(digits) if digits > MAX_INT_DIGITS else int(text)


def decode_json(data: bytes) -> Any:
    """The JSON document of an API write body or an MQTT command.

    Raises :class:`WriteFailed`: ``malformed`` when it is not JSON (or not UTF-8), ``invalid`` when it is
    nested deeper than Python's recursion limit. Never anything else (no RecursionError, no traceback).
    Integers of more than :data:`MAX_INT_DIGITS` digits become :class:`HugeInteger` (refused as a value,
    while the rest of the document, e.g. a command's ``id``, can still be read).
    """
    try:
        return json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise WriteFailed("invalid", "the JSON is nested too deeply (a value is a number, true/false or text)") \
            from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise WriteFailed("malformed", f"not valid JSON ({safe(exc, 120)})") from None


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


async def perform(
    assets: Mapping[str, AssetRuntime], asset: str, tag: str, value: Any, *, origin: str
) -> WriteOutcome:
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


# -------------------------------------------------------------------------------------------- MQTT commands

#: the fields of a command
COMMAND_FIELDS = frozenset({"tag", "value", "id", "by", "ts", "expires"})
#: longest ``id`` accepted, in characters
MAX_ID = 128


class BadCommand(ValueError):
    """An MQTT command that cannot be executed; ``request_id`` is its ``id`` when one could be read.

    ``kind`` is the result's ``code`` (a key of :data:`HTTP_STATUS`)."""

    def __init__(self, message: str, request_id: Any = None, kind: str = "malformed") -> None:
        super().__init__(message)
        self.request_id, self.kind = request_id, kind


@dataclass(frozen=True, slots=True)
class Command:
    request_id: str | int  # echoed in the result
    tag: str
    value: Any
    by: str | None  # self-declared sender, logged (not verified)
    ts: float | None = None  # when the sender sent it, ms since the epoch
    expires: float | None = None  # ms since the epoch after which it must not be executed


def _epoch_ms(doc: dict[str, Any], key: str, request_id: Any) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value):
        raise BadCommand(f'"{key}" must be a number: milliseconds since 1970-01-01 UTC', request_id)
    return float(value)


def parse_command(payload: bytes) -> Command:
    """``{"tag": ..., "value": ..., "id": ...}`` (``by``, ``ts``, ``expires`` optional) -> :class:`Command`.

    Raises :class:`BadCommand` (with the ``id`` when it could be read) for anything else; never another
    exception, whatever the payload (deep nesting, huge numbers, invalid UTF-8).
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise BadCommand(f"command of {len(payload)} bytes is larger than {MAX_COMMAND_BYTES}", kind="too_large")
    try:
        doc = decode_json(payload)
    except WriteFailed as exc:
        raise BadCommand(f"command: {exc.message}", kind=exc.kind) from None
    if not isinstance(doc, dict):
        raise BadCommand('command must be a JSON object: {"tag": ..., "value": ..., "id": ...}')
    request_id = doc.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        raise BadCommand('command needs "id": a string or an integer, echoed in the result')
    if isinstance(request_id, str) and not 0 < len(request_id) <= MAX_ID:
        raise BadCommand(f'"id" must be 1 to {MAX_ID} characters long')
    if isinstance(request_id, int) and len(str(abs(request_id))) > 20:
        raise BadCommand('"id" as an integer must fit in 64 bits')
    tag = doc.get("tag")
    if not isinstance(tag, str) or not tag:
        raise BadCommand('command needs "tag": the name of the tag to write', request_id)
    if "value" not in doc:
        raise BadCommand('command needs "value": the value to write', request_id)
    unknown = sorted(set(doc) - COMMAND_FIELDS)
    if unknown:
        shown = ", ".join(_show(k, 40) for k in unknown[:5])
        raise BadCommand(f"unknown field(s) {shown}; a command has {', '.join(sorted(COMMAND_FIELDS))}", request_id)
    ts, expires = _epoch_ms(doc, "ts", request_id), _epoch_ms(doc, "expires", request_id)
    by = doc.get("by")
    return Command(request_id, tag, doc["value"], str(by)[:64] if _is_scalar(by) else None, ts, expires)


def check_fresh(cmd: Command, *, now_ms: float, max_age: float) -> None:
    """Refuse (:class:`BadCommand`, kind ``stale``) a command past its ``expires``, or whose ``ts`` is more
    than ``max_age`` seconds away from now (older, or in the future: a sender's clock that is off)."""
    if cmd.expires is not None and now_ms > cmd.expires:
        raise BadCommand(f"command expired {(now_ms - cmd.expires) / 1000:.1f} s ago (\"expires\")", cmd.request_id,
                         kind="stale")  # fmt: skip
    if cmd.ts is not None:
        age = (now_ms - cmd.ts) / 1000.0
        if age > max_age:
            raise BadCommand(f"command is {age:.1f} s old (\"ts\"); older than cmd_max_age {max_age:g} s",
                             cmd.request_id, kind="stale")  # fmt: skip
        if -age > max_age:
            raise BadCommand(f"command's \"ts\" is {-age:.1f} s in the future (more than cmd_max_age "
                             f"{max_age:g} s): is the sender's clock right?", cmd.request_id, kind="stale")


Publish = Callable[..., None]


class MqttCommands:
    """Executes write commands arriving on ``{namespace}/{asset}/cmd``; answers on ``.../cmd/result``.

    :meth:`on_message` is the uplink's message callback (runs on the event loop). Each command becomes a
    task (tracked, cancelled by :meth:`close`). Every command gets one result, also a refused one: with
    its ``id`` when one could be read, else ``"id": null`` (an empty message, which clears a retained one,
    is no command and gets none). Refused before anything is written:

    - a command with the retain flag (MQTT 3.1.1 sets it only on messages the broker delivers because the
      gateway subscribed, i.e. stale ones; see docs/write-back.md for what it cannot see);
    - one past its ``expires``, or whose ``ts`` is more than ``max_age`` seconds from the gateway's clock;
    - one that is not a JSON object of the known fields, or that names an unknown asset or tag.
    """

    def __init__(self, assets: Mapping[str, AssetRuntime], namespace: str, publish: Publish, *,
                 max_age: float = CMD_MAX_AGE, clock: Callable[[], float] = time.time) -> None:
        self.assets = assets
        self.namespace = namespace
        self.max_age = max_age
        self._clock = clock
        self._publish = publish
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def topic_filter(self) -> str:
        """The one topic filter to subscribe to, for every asset (``{namespace}/+/cmd``): a command to an
        unknown asset is answered too."""
        return f"{self.namespace}/+/cmd"

    def result_topic(self, asset: str) -> str:
        return f"{self.namespace}/{asset}/cmd/result"

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:  # how a retained command is cleared (mosquitto_pub -r -n): not a command, no answer
            return
        asset = topic.removeprefix(self.namespace + "/").removesuffix("/cmd")
        origin, tag, value = f"mqtt {topic}", "", None
        try:
            cmd = parse_command(payload)
            tag, value = cmd.tag, cmd.value if _is_scalar(cmd.value) else None
            origin += f" id={cmd.request_id!r}" + (f" by {cmd.by!r} (unverified)" if cmd.by else "")
            if retained:
                raise BadCommand("retained commands are not executed (publish commands without the retain flag; "
                                 "clear this one with an empty retained message)", cmd.request_id, kind="retained")
            check_fresh(cmd, now_ms=self._clock() * 1000.0, max_age=self.max_age)
        except BadCommand as exc:
            if exc.request_id is not None and "id=" not in origin:
                origin += f" id={exc.request_id!r}"
            outcome = WriteOutcome(asset, tag, value, ok=False, kind=exc.kind, error=str(exc))
            log_outcome(outcome, origin)
            self._answer(asset, exc.request_id, outcome)
            return
        task = asyncio.get_running_loop().create_task(self._execute(asset, origin, cmd), name="cmd")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, asset: str, origin: str, cmd: Command) -> None:
        outcome = await perform(self.assets, asset, cmd.tag, cmd.value, origin=origin)
        self._answer(asset, cmd.request_id, outcome)

    def _answer(self, asset: str, request_id: Any, outcome: WriteOutcome) -> None:
        body = {
            "id": request_id,
            "ok": outcome.ok,
            "asset": asset,
            "tag": outcome.tag or None,
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
