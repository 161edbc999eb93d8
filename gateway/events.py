"""The dashboard's live feed: a compact snapshot of every asset and uplink, pushed as server-sent events.

``GET /api/v1/events`` answers ``text/event-stream``. The first event is ``meta`` (what does not change
while the gateway runs: assets, their tags with unit and whether they are writable); then a ``snapshot``
event once a second with the newest value, quality, sample time and error of every tag, each asset's
status counters and the uplinks' state. The snapshot is read from the ring buffers on the event loop, like
every other handler, and built at most once per interval however many browsers watch.

Each client costs one task and at most one snapshot in flight: a client that does not take a snapshot within
:data:`SEND_TIMEOUT` is dropped; at most :data:`MAX_CLIENTS` streams are served at once (503 beyond); a
stream ends when the client goes away or the API shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.reduce import float32_numbers, json_numbers

if TYPE_CHECKING:
    from gateway.engine import Gateway
    from gateway.source import AssetRuntime

#: seconds between two snapshots
INTERVAL = 1.0
#: streams served at once; one more is answered 503
MAX_CLIENTS = 32
#: seconds a client may take to accept one event before its stream is dropped
SEND_TIMEOUT = 10.0
#: the browser's reconnect delay after the stream broke (EventSource ``retry``), milliseconds
RETRY_MS = 2000

_BOOL_TYPES = frozenset({"bool", "bit", "coil", "discrete"})


def _kind(tag: Any) -> str:
    """What the write control offers: ``number``, ``bool``, ``string``, or ``auto`` (type known only at run
    time, e.g. an OPC UA node)."""
    t = str(getattr(tag, "type", "") or "")
    if t == "string":
        return "string"
    if t in _BOOL_TYPES:
        return "bool"
    return "number" if t else "auto"


def _tag_meta(tag: Any) -> dict[str, Any]:
    """``name`` and ``kind`` always; ``unit``, ``description``, ``min``, ``max`` when set; ``writable`` when true
    (thousands of tags: no keys for what is not there)."""
    out: dict[str, Any] = {"name": tag.name, "kind": _kind(tag)}
    for key in ("unit", "description", "min", "max"):
        value = getattr(tag, key, None)
        if value is not None:
            out[key] = value
    if tag.writable:
        out["writable"] = True
    return out


def meta(gw: "Gateway") -> dict[str, Any]:
    """What the dashboard draws once: the gateway, the assets and their tags (order = snapshot order)."""
    return {
        "gateway": {"id": gw.cfg.gateway.id, "version": __version__, "namespace": gw.cfg.gateway.namespace},
        "writes": gw.cfg.api.token is not None,
        "assets": [
            {
                "id": a.id,
                "description": a.cfg.description,
                "driver": a.source.driver,
                "poll_interval_s": a.source.poll,
                "tags": [_tag_meta(t) for t in a.tags],
            }
            for a in gw.assets.values()
        ],
    }


def asset_snapshot(a: "AssetRuntime") -> dict[str, Any]:
    """One asset's newest tag values (lists in tag order; quality 0 good, 1 uncertain, 2 bad, null never
    read; ``ts`` Unix ms) and its status counters."""
    ts, v, q, has = a.ring.last()
    good = has & (q != 2)
    shown = np.where(a.meta.float32, float32_numbers(v), json_numbers(v))
    shown = np.where(good & ~np.isnan(shown), shown, np.nan)
    values: list[Any] = shown.tolist()
    for i in np.flatnonzero(np.isnan(shown)).tolist():
        values[i] = None
    for i, text in enumerate(a.ring.last_string):
        if text is not None and good[i]:
            values[i] = text
    quality = [int(x) if h else None for x, h in zip(q.tolist(), has.tolist())]
    errors: list[str | None] = [None] * len(a.tags)
    for i in np.flatnonzero(has & (q == 2)).tolist():
        code = int(a.ring.last_error[i])
        errors[i] = a.ring.error_text.get(code, f"error {code}") if code else "bad"
    s = a.status
    return {
        "state": s.state,
        "state_since": s.state_since,
        "last_poll": s.last_poll_ok,
        **s.counters(),
        "bad_tags": int(np.count_nonzero(has & (q == 2))),
        "v": values,
        "q": quality,
        "ts": np.where(has, ts // 1_000_000, 0).tolist(),
        "err": errors,
    }


def uplinks_snapshot(status: dict[str, Any]) -> dict[str, Any]:
    """The uplinks' part of ``Gateway.gateway_status()``: connected, active link, bytes and the spool."""
    out: dict[str, Any] = {}
    for name, u in (status.get("uplinks") or {}).items():
        spool = u.get("spool") or {}
        out[name] = {
            "connected": bool(u.get("connected")),
            "active_link": u.get("active_link"),
            "last_error": u.get("last_error"),
            "messages_published": u.get("messages_published"),
            "links": {
                ln: {k: link.get(k) for k in ("connected", "active", "bytes_sent", "messages_sent", "metered")}
                for ln, link in (u.get("links") or {}).items()
            },
            "spool": {k: spool.get(k) for k in ("messages", "bytes", "oldest_age_s", "dropped_messages")},
        }
    return out


def snapshot(gw: "Gateway") -> dict[str, Any]:
    """Everything that changes, for one ``snapshot`` event; ``t`` is the server's time (Unix ms), so the
    browser computes ages without trusting its own clock."""
    status = gw.gateway_status()
    return {
        "t": time.time_ns() // 1_000_000,
        "uptime_s": status.get("uptime_s"),
        "uplinks": uplinks_snapshot(status),
        "assets": {a.id: asset_snapshot(a) for a in gw.assets.values()},
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventHub:
    """Serves the event streams of one gateway; ``clients`` counts the open ones."""

    def __init__(self, gw: "Gateway", *, interval: float = INTERVAL, max_clients: int = MAX_CLIENTS) -> None:
        self.gw = gw
        self.interval = interval
        self.max_clients = max_clients
        self.clients = 0
        #: true once the API is shutting down (set by ``serve_api`` to the server's ``should_exit``)
        self.closing: Callable[[], bool] = lambda: False
        self._cached: tuple[float, bytes] | None = None

    def snapshot_event(self) -> bytes:
        """The current snapshot, encoded; rebuilt at most once per half interval for all clients together."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self.interval / 2:
            self._cached = (now, _event("snapshot", snapshot(self.gw)))
        return self._cached[1]

    def response(self) -> Response:
        if self.clients >= self.max_clients:
            return Response(
                orjson.dumps({"detail": f"at most {self.max_clients} event streams at once", "error": "busy"}),
                status_code=503,
                media_type="application/json",
            )
        return _EventStream(self)


class _EventStream(Response):
    """One client's stream (an ASGI response of its own, so every send can carry a timeout)."""

    def __init__(self, hub: EventHub) -> None:  # no super().__init__: no body, no Content-Length
        self.hub = hub
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def push(body: bytes, more: bool = True) -> None:
            async with asyncio.timeout(SEND_TIMEOUT):
                await send({"type": "http.response.body", "body": body, "more_body": more})

        hub.clients += 1
        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await push(b"retry: %d\n" % RETRY_MS + _event("meta", meta(hub.gw)))
            while not gone.is_set() and not hub.closing():
                await push(hub.snapshot_event())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(hub.interval):
                        await gone.wait()
            if not gone.is_set():
                await push(b"", more=False)
        except (TimeoutError, OSError):
            pass  # a client that stopped reading, or a connection that broke: this stream ends
        finally:
            hub.clients -= 1
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
