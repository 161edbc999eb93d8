"""Run the real gateway in-process against the bundled simulators and a real broker (configs: helpers.gateway_config)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from gateway.config import load_config
from gateway.daemon import build
from gateway.engine import Gateway
from helpers import NAMESPACE, free_port



class RunningGateway:
    def __init__(self, gw: Gateway, task: asyncio.Task, stop: asyncio.Event, api_port: int) -> None:
        self.gw, self.task, self.stop_event, self.api_port = gw, task, stop, api_port
        self.api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5)

    async def stop(self) -> None:
        self.stop_event.set()
        async with asyncio.timeout(10):
            await self.task
        await self.api.aclose()


@contextlib.asynccontextmanager
async def running_gateway(config_path: Path) -> AsyncIterator[RunningGateway]:
    cfg = load_config(config_path)
    gw = build(cfg)
    sock = gw.bind_api()
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop, sock))
    rg = RunningGateway(gw, task, stop, cfg.api.port)
    try:
        yield rg
    finally:
        if not task.done():
            await rg.stop()
        else:
            await rg.api.aclose()
            task.result()


def data_of(asset: str):
    """Predicate: a data message of ``asset``."""
    topic = f"{NAMESPACE}/{asset}/data"
    return lambda m: m.topic == topic


async def latest_values(sub, asset: str, want: dict[str, object], timeout: float = 15.0) -> dict[str, object]:
    """Merge data messages of ``asset`` until every tag in ``want`` has its wanted value (or time runs out)."""
    seen: dict[str, object] = {}
    try:
        async with asyncio.timeout(timeout):
            while any(seen.get(k) != v for k, v in want.items()):
                msg = await sub.next(data_of(asset))
                for name, entry in msg.json()["tags"].items():
                    seen[name] = entry["v"]
    except TimeoutError:
        pass
    return seen


__all__ = ["NAMESPACE", "RunningGateway", "data_of", "free_port", "latest_values", "running_gateway"]
