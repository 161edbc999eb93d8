"""Status API (FastAPI, served by uvicorn inside the daemon's event loop).

Handlers are ``async def`` on purpose: they run on the event loop, like the single writer of the ring
buffers, so they never see a half-written batch (sync handlers would run in a thread pool).

Read-only views of the ring buffers and runtime status; it never calls a driver. The one write endpoint
(PUT a tag's value) hands the write to :mod:`gateway.writes`, which queues it to the asset's source task.

It also serves the dashboard (``/``, files in ``gateway/web/static``), its live feed (``/api/v1/events``,
:mod:`gateway.events`) and the API docs (``/docs``, ``/redoc``) from vendored files in ``gateway/web/vendor``:
nothing is loaded from the internet, so every page works on a plant network without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from gateway import __version__
from gateway.batch import QUALITY_NAMES
from gateway.events import EventHub
from gateway.logsafe import safe
from gateway.reduce import json_list, json_value
from gateway.commands import MAX_COMMAND_BYTES, decode_json
from gateway.writes import WriteFailed, perform

_log = logging.getLogger("gateway.writes")

#: the dashboard's own files and the vendored Swagger UI / ReDoc bundles (installed as package data)
WEB_DIR = Path(__file__).with_name("web")
#: the HTML pages may load nothing from elsewhere: ReDoc's bundle, for one, always asks a CDN for a logo
#: (the inline scripts and styles are FastAPI's docs page bootstrap and the bundles' own)
PAGE_POLICY = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; frame-ancestors 'self'",
}

#: kind of a failed write (gateway.writes.KINDS) -> HTTP status of the API answer
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


def http_status(kind: str | None) -> int:
    """The HTTP status of a failed write of ``kind`` (500 for a kind without one)."""
    return HTTP_STATUS.get(kind or "", 500)


if TYPE_CHECKING:
    from gateway.engine import Gateway
    from gateway.source import AssetRuntime


class TagStatus(BaseModel):
    name: str
    value: float | str | None = Field(description="Newest value (engineering units); null when bad or never read")
    quality: str | None = Field(description="good, uncertain or bad; null when never read")
    ts: int | None = Field(description="Sample time, Unix epoch milliseconds UTC")
    age_s: float | None = Field(description="Seconds since the sample was taken")
    unit: str | None = None
    error: str | None = Field(default=None, description="Why the tag is bad")
    description: str | None = None


class AssetSummary(BaseModel):
    id: str
    description: str | None
    driver: str
    state: str = Field(description="connecting, connected, disconnected or stopped")
    state_since: float = Field(description="Unix epoch seconds of the last state change")
    last_poll: float | None = Field(description="Unix epoch seconds of the last successful poll")
    tags: int
    bad_tags: int


class AssetDetail(AssetSummary):
    poll_interval_s: float
    latency_ms_last: float | None
    latency_ms_p50: float | None
    polls: int
    poll_errors: int
    tag_errors: int
    connect_failures: int
    reconnects: int
    overruns: int
    last_error: str | None
    last_error_at: float | None
    driver_counters: dict[str, int] | None = Field(
        None, description="The driver's own counters, e.g. discarded serial lines or RTU CRC errors"
    )
    tag_values: list[TagStatus]


class WriteBody(BaseModel):
    value: float | int | bool | str = Field(description="The value in engineering units (true/false for bits)")


class WriteResult(BaseModel):
    asset: str
    tag: str
    ok: bool
    value: float | int | bool | str | None = Field(description="The value read back from the device after the write")
    requested: float | int | bool | str | None = Field(description="The value that was asked for")


class History(BaseModel):
    asset: str
    tag: str
    unit: str | None
    ts: list[int] = Field(description="Unix epoch milliseconds UTC, oldest first")
    v: list[float | None]
    q: list[str]


def _summary(a: "AssetRuntime") -> dict[str, Any]:
    _, _, q, has = a.ring.last()
    s = a.status
    return {
        "id": a.id,
        "description": a.cfg.description,
        "driver": a.source.driver,
        "state": s.state,
        "state_since": s.state_since,
        "last_poll": s.last_poll_ok,
        "tags": len(a.tags),
        "bad_tags": int(np.count_nonzero(has & (q == 2))),
    }


def _tag_values(a: "AssetRuntime") -> list[TagStatus]:
    ts, v, q, has = a.ring.last()
    now_ns = time.time_ns()
    out = []
    for i, tag in enumerate(a.tags):
        if not has[i]:
            out.append(
                TagStatus(
                    name=tag.name,
                    value=None,
                    quality=None,
                    ts=None,
                    age_s=None,
                    unit=tag.unit,
                    description=tag.description,
                )
            )
            continue
        s = a.ring.last_string[i]
        if q[i] == 2:  # bad: no value, strings included
            value: float | str | None = None
        else:
            value = s if s is not None else json_value(float(v[i]), bool(a.meta.float32[i]))
        err = int(a.ring.last_error[i])
        out.append(
            TagStatus(
                name=tag.name,
                value=value,
                quality=str(QUALITY_NAMES[q[i]]),
                ts=int(ts[i]) // 1_000_000,
                age_s=round((now_ns - int(ts[i])) / 1e9, 3),
                unit=tag.unit,
                error=a.ring.error_text.get(err, f"error {err}") if q[i] == 2 and err else None,
                description=tag.description,
            )
        )
    return out


def _driver_counters(a: "AssetRuntime") -> dict[str, int] | None:
    return dict(a.driver.counters()) or None


def create_app(gw: "Gateway") -> FastAPI:
    app = FastAPI(
        title="iiot-gateway status API",
        version=__version__,
        description="Per-asset status, tag values and history of an iiot-gateway.",
        docs_url=None,  # the default pages load Swagger UI / ReDoc from a CDN: ours below use vendored files
        redoc_url=None,
    )
    generated_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the bearer scheme that the write endpoint names (Swagger UI's Authorize)."""
        schema = generated_openapi()  # built once and cached by FastAPI
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "api.token of the gateway (docs/write-back.md)",
        }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.mount("/vendor", StaticFiles(directory=WEB_DIR / "vendor"), name="vendor")
    hub = EventHub(gw)
    app.state.events = hub
    favicon = "/static/favicon.svg"

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(WEB_DIR / "static" / "index.html", headers={"Cache-Control": "no-cache", **PAGE_POLICY})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url=favicon,
            oauth2_redirect_url=None,  # no OAuth here: the write endpoint takes a bearer token
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the validator service
        )
        page.headers.update(PAGE_POLICY)
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url="/vendor/redoc/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
        page.headers.update(PAGE_POLICY)
        return page

    @app.get(
        "/api/v1/events",
        tags=["gateway"],
        response_class=Response,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "`meta` once, then a `snapshot` event every second",
            },
            503: {"description": "too many event streams open"},
        },
    )
    async def events() -> Response:
        """Live feed of the dashboard (server-sent events): a ``meta`` event with the assets and their tags,
        then once a second a ``snapshot`` with every tag's newest value, quality, time and error, the
        assets' counters and the uplinks' state."""
        return hub.response()

    def asset_or_404(asset: str) -> "AssetRuntime":
        try:
            return gw.assets[asset]
        except KeyError:
            raise HTTPException(404, f"unknown asset {asset!r}; known: {', '.join(gw.assets)}") from None

    app.state.loop_lag = None  # a gateway.looplag.LoopLag once serve_api runs

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}},
    )
    async def metrics() -> Response:
        """Prometheus metrics: sources, uplinks, links, spools, event-loop lag, build info (README)."""
        # prometheus_client is imported on the first scrape only
        from gateway.metrics import CONTENT_TYPE, render

        return Response(render(gw, app.state.loop_lag), media_type=CONTENT_TYPE)

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """The process is up and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Ready when the config is loaded and every uplink is connected to its broker."""
        ok = gw.ready
        down = [n.uplink.name for n in gw.norths if not n.uplink.connected]
        body = {
            "status": "ready" if ok else "not ready",
            "config_loaded": gw.config_loaded,
            "broker_connected": gw.uplink.connected,
            "uplinks_down": down,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/api/v1/gateway", tags=["gateway"])
    async def gateway_status() -> dict[str, Any]:
        """The gateway itself: version, uptime, uplink state and counters."""
        return gw.gateway_status()

    @app.get("/api/v1/assets", response_model=list[AssetSummary], tags=["assets"])
    async def list_assets() -> list[dict[str, Any]]:
        """Every configured asset with its connection state."""
        return [_summary(a) for a in gw.assets.values()]

    @app.get(
        "/api/v1/assets/{asset}",
        response_model=AssetDetail,
        tags=["assets"],
        responses={404: {"description": "unknown asset"}},
    )
    async def asset_detail(asset: str) -> dict[str, Any]:
        """One asset: connection state, poll timing and counters, last error, and every tag's newest value."""
        a = asset_or_404(asset)
        s = a.status
        return {
            **_summary(a),
            "poll_interval_s": a.source.poll,
            **s.counters(),
            "driver_counters": _driver_counters(a),
            "tag_values": _tag_values(a),
        }

    @app.get(
        "/api/v1/assets/{asset}/tags/{tag}/history",
        response_model=History,
        tags=["assets"],
        responses={404: {"description": "unknown asset or tag"}},
    )
    async def tag_history(asset: str, tag: str, seconds: float = Query(60.0, gt=0, le=86400)) -> dict[str, Any]:
        """Samples of one tag from the ring buffer over the last ``seconds``."""
        a = asset_or_404(asset)
        i = a.tag_index.get(tag)
        if i is None:
            raise HTTPException(404, f"asset {asset!r} has no tag {tag!r}; tags: {', '.join(a.tag_index)}")
        w = a.ring.window(i, time.time_ns() - int(seconds * 1e9))
        f32 = bool(a.meta.float32[i])
        return {
            "asset": asset,
            "tag": tag,
            "unit": a.tags[i].unit,
            "ts": (w.ts // 1_000_000).tolist(),
            "v": json_list(w.values, f32),
            "q": QUALITY_NAMES[w.quality].tolist(),
        }

    @app.post(
        "/api/v1/reload",
        tags=["gateway"],
        openapi_extra={"security": [{"bearer": []}]},
        responses={
            401: {"description": "missing or wrong token"},
            403: {"description": "no api.token configured"},
            409: {"description": "the change needs a restart, or nothing to roll back to"},
            422: {"description": "the file is invalid: the running config is kept"},
        },
    )
    async def reload(request: Request, rollback: bool = Query(False)) -> JSONResponse:
        """Re-read the config file and restart only the changed assets and uplinks (README: Hot reload);
        ``rollback=true`` applies the config from before the last reload. Needs the API token."""
        from gateway.reload import ReloadRefused, reload_file
        from gateway.reload import rollback as roll_back

        refusal = _check_token(gw.cfg.api.token, request.headers.get("authorization"))
        if refusal is not None:
            return JSONResponse({"detail": refusal[1]}, status_code=refusal[0])
        try:
            done = await (roll_back(gw) if rollback else reload_file(gw))
        except ReloadRefused as exc:
            return JSONResponse({"ok": False, "errors": exc.errors}, status_code=422 if exc.invalid else 409)
        return JSONResponse({"ok": True, "rollback": rollback, "changed": done.summary()})

    @app.put(
        "/api/v1/assets/{asset}/tags/{tag}",
        response_model=WriteResult,
        tags=["write-back"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": WriteBody.model_json_schema(), "example": {"value": 42.5}}},
            },
            "security": [{"bearer": []}],
        },
        responses={
            400: {"description": 'the body is not JSON of the form {"value": ...}'},
            413: {"description": f"the body is larger than {MAX_COMMAND_BYTES} bytes"},
            401: {"description": "missing or wrong bearer token"},
            403: {"description": "API writes are off (no api.token) or the tag is not writable"},
            404: {"description": "unknown asset or tag"},
            422: {"description": "wrong type or out of range for the tag; JSON nested too deeply; a huge integer"},
            502: {"description": "the device refused the write or read back another value"},
            503: {"description": "the device is disconnected"},
            504: {"description": "no answer in time; the write may or may not have been applied"},
        },
    )
    async def write_tag(asset: str, tag: str, request: Request) -> JSONResponse:
        """Write one value to a writable tag and read it back (docs/write-back.md).

        Needs ``Authorization: Bearer <api.token>``. The answer carries the value read back from the device.
        """
        peer = f"{request.client.host}:{request.client.port}" if request.client else "unknown peer"

        def refuse(status: int, kind: str, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
            _log.warning("write %s/%s from api %s: refused (%d): %s", safe(asset, 80), safe(tag, 80), peer, status,
                         safe(text, 500))  # fmt: skip
            return JSONResponse({"detail": text, "error": kind}, status_code=status, headers=headers)

        refusal = _check_token(gw.cfg.api.token, request.headers.get("authorization"))
        if refusal is not None:
            status, text = refusal
            if status == 401:
                return refuse(401, "unauthorized", text, {"WWW-Authenticate": "Bearer"})
            return refuse(status, "forbidden", text)
        data = await _read_capped(request, MAX_COMMAND_BYTES)
        if data is None:
            return refuse(413, "too_large", f"the body is larger than {MAX_COMMAND_BYTES} bytes")
        try:
            body = decode_json(data)
        except WriteFailed as exc:
            if exc.kind != "malformed":
                return refuse(http_status(exc.kind), exc.kind, exc.message)
            body = None
        if not isinstance(body, dict) or "value" not in body or len(body) != 1:
            return refuse(400, "malformed", 'the body must be a JSON object {"value": ...}')
        outcome = await perform(gw.assets, asset, tag, body["value"], origin=f"api {peer}")
        if not outcome.ok:
            return JSONResponse({"detail": outcome.error, "error": outcome.kind}, status_code=http_status(outcome.kind))
        return JSONResponse(
            {"asset": asset, "tag": tag, "ok": True, "value": outcome.value, "requested": outcome.requested}
        )

    return app


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to be longer than ``limit`` bytes: from the
    Content-Length header without reading anything, else after at most ``limit`` bytes plus one chunk."""
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _check_token(token: Any, header: str | None) -> tuple[int, str] | None:
    """None when ``header`` carries the configured bearer token, else (HTTP status, reason). Constant time."""
    if token is None:
        return 403, "API writes are off: no api.token is configured on this gateway"
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "missing bearer token: send the header Authorization: Bearer <api.token>"
    if not secrets.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        return 401, "wrong bearer token"
    return None


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: the daemon owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve_api(gw: "Gateway", sock: socket.socket) -> tuple[uvicorn.Server, Any]:
    """The uvicorn server and the coroutine that serves ``sock`` (and measures event-loop lag meanwhile)."""
    app = create_app(gw)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = _EmbeddedServer(config)
    app.state.events.closing = lambda: server.should_exit  # open event streams end when the API stops

    async def serve() -> None:
        from gateway.looplag import LoopLag

        app.state.loop_lag = lag = LoopLag()
        lag_task = asyncio.create_task(lag.run(), name="loop-lag")
        try:
            await server.serve(sockets=[sock])
        finally:
            lag_task.cancel()

    return server, serve()
