"""MQTT write commands: parse, check freshness, execute through :func:`gateway.writes.perform`, answer.

A command arrives on ``{namespace}/{asset}/cmd`` of an uplink's broker and is answered on ``.../cmd/result``
(docs/write-back.md). The JSON decoding with its limits (:func:`decode_json`, :data:`MAX_COMMAND_BYTES`) is
shared with the API's write endpoint: one place for what a write request may look like on the wire.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.logsafe import safe
from gateway.scaling import _is_number
from gateway.writes import (
    HugeInteger,
    WriteFailed,
    WriteOutcome,
    _is_scalar,
    _show,
    log_outcome,
    perform,
)

if TYPE_CHECKING:
    from gateway.source import AssetRuntime

#: largest MQTT command payload and API write body accepted, in bytes
MAX_COMMAND_BYTES = 65536
#: integers with more digits are refused while parsing (the largest 64-bit value has 20 digits); a JSON
#: integer of 10**400 must never reach a driver's float()
MAX_INT_DIGITS = 24
#: default of how old (``ts``) an MQTT command may be, in seconds
CMD_MAX_AGE = 10.0


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
        raise WriteFailed(
            "invalid", "the JSON is nested too deeply (a value is a number, true/false or text)"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise WriteFailed("malformed", f"not valid JSON ({safe(exc, 120)})") from None


#: the fields of a command
COMMAND_FIELDS = frozenset({"tag", "value", "id", "by", "ts", "expires"})
#: longest ``id`` accepted, in characters
MAX_ID = 128


class BadCommand(ValueError):
    """An MQTT command that cannot be executed; ``request_id`` is its ``id`` when one could be read.

    ``kind`` is the result's ``code`` (a key of :data:`gateway.writes.KINDS`)."""

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
            raise BadCommand(
                f'command\'s "ts" is {-age:.1f} s in the future (more than cmd_max_age '
                f"{max_age:g} s): is the sender's clock right?",
                cmd.request_id,
                kind="stale",
            )


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

    def __init__(
        self,
        assets: Mapping[str, AssetRuntime],
        namespace: str,
        publish: Publish,
        *,
        max_age: float = CMD_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
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
                raise BadCommand(
                    "retained commands are not executed (publish commands without the retain flag; "
                    "clear this one with an empty retained message)",
                    cmd.request_id,
                    kind="retained",
                )
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
