"""Status API (FastAPI, served by uvicorn inside the daemon's event loop).

Handlers are ``async def`` on purpose: they run on the event loop, like the single writer of the ring
buffers, so they never see a half-written batch (sync handlers would run in a thread pool).

Read-only views of the ring buffers and runtime status; it never calls a driver.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway import __version__
from gateway.batch import QUALITY_NAMES
from gateway.reduce import json_value

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
    error: str | None = Field(None, description="Why the tag is bad")
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
    tag_values: list[TagStatus]


class History(BaseModel):
    asset: str
    tag: str
    unit: str | None
    ts: list[int] = Field(description="Unix epoch milliseconds UTC, oldest first")
    v: list[float | None]
    q: list[str]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


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
            out.append(TagStatus(name=tag.name, value=None, quality=None, ts=None, age_s=None, unit=tag.unit,
                                 description=tag.description))
            continue
        s = a.ring.last_string[i]
        value: float | str | None = s if s is not None else json_value(float(v[i]), bool(a.reducer.float32[i]))
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


def create_app(gw: "Gateway") -> FastAPI:
    app = FastAPI(
        title="iiot-gateway status API",
        version=__version__,
        description="Per-asset status, tag values and history of an iiot-gateway.",
    )

    def asset_or_404(asset: str) -> "AssetRuntime":
        try:
            return gw.assets[asset]
        except KeyError:
            raise HTTPException(404, f"unknown asset {asset!r}; known: {', '.join(gw.assets)}") from None

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """The process is up and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Ready when the config is loaded and the MQTT broker is connected."""
        ok = gw.ready
        body = {"status": "ready" if ok else "not ready", "config_loaded": gw.config_loaded,
                "broker_connected": gw.uplink.connected}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/api/v1/gateway", tags=["gateway"])
    async def gateway_status() -> dict[str, Any]:
        """The gateway itself: version, uptime, uplink state and counters."""
        return gw.gateway_status()

    @app.get("/api/v1/assets", response_model=list[AssetSummary], tags=["assets"])
    async def list_assets() -> list[dict[str, Any]]:
        """Every configured asset with its connection state."""
        return [_summary(a) for a in gw.assets.values()]

    @app.get("/api/v1/assets/{asset}", response_model=AssetDetail, tags=["assets"],
             responses={404: {"description": "unknown asset"}})
    async def asset_detail(asset: str) -> dict[str, Any]:
        """One asset: connection state, poll timing and counters, last error, and every tag's newest value."""
        a = asset_or_404(asset)
        s = a.status
        return {
            **_summary(a),
            "poll_interval_s": a.source.poll,
            "latency_ms_last": _ms(s.latency_last),
            "latency_ms_p50": _ms(s.latency_p50),
            "polls": s.polls,
            "poll_errors": s.poll_errors,
            "tag_errors": s.tag_errors,
            "connect_failures": s.connect_failures,
            "reconnects": s.reconnects,
            "overruns": s.overruns,
            "last_error": s.last_error,
            "last_error_at": s.last_error_at,
            "tag_values": _tag_values(a),
        }

    @app.get("/api/v1/assets/{asset}/tags/{tag}/history", response_model=History, tags=["assets"],
             responses={404: {"description": "unknown asset or tag"}})
    async def tag_history(asset: str, tag: str, seconds: float = Query(60.0, gt=0, le=86400)) -> dict[str, Any]:
        """Samples of one tag from the ring buffer over the last ``seconds``."""
        a = asset_or_404(asset)
        i = a.tag_index.get(tag)
        if i is None:
            raise HTTPException(404, f"asset {asset!r} has no tag {tag!r}; tags: {', '.join(a.tag_index)}")
        w = a.ring.window(i, time.time_ns() - int(seconds * 1e9))
        f32 = bool(a.reducer.float32[i])
        return {
            "asset": asset,
            "tag": tag,
            "unit": a.tags[i].unit,
            "ts": (w.ts // 1_000_000).tolist(),
            "v": [json_value(x, f32) for x in w.values.tolist()],
            "q": QUALITY_NAMES[w.quality].tolist(),
        }

    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: the daemon owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


def serve_api(gw: "Gateway", sock: socket.socket) -> tuple[uvicorn.Server, Any]:
    config = uvicorn.Config(create_app(gw), log_level="warning", lifespan="off", access_log=False)
    server = _EmbeddedServer(config)
    return server, server.serve(sockets=[sock])
