"""``iiot-gateway demo``: the bundled simulators, a local broker and the gateway on config/demo.yaml.

Everything runs in this one process (the broker as a Mosquitto child process when installed); Ctrl-C
stops the gateway first, then the broker and the simulators.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gateway.config.cli import load_or_exit
from gateway.daemon import install_stop_signals, run_gateway

log = logging.getLogger("gateway.demo")

DEFAULT_CONFIG = Path("config/demo.yaml")


def _apply_overrides(cfg, args: argparse.Namespace) -> tuple[int, int]:
    """Point the config at the ports given on the command line; returns (modbus_port, opcua_port)."""
    if args.mqtt_port:
        cfg.all_uplinks[0].port = args.mqtt_port
    if getattr(args, "state_dir", None):
        cfg.gateway.state_dir = args.state_dir
    if args.api_port:
        host = cfg.api.host
        cfg.api.listen = f"{host}:{args.api_port}"
    modbus_port, opcua_port = 5020, 4840
    for asset in cfg.assets:
        src = asset.source
        if src.driver == "modbus_tcp":
            if args.modbus_port:
                src.port = args.modbus_port
            modbus_port = src.port
        elif src.driver == "opcua":
            parts = urlsplit(src.endpoint)
            if args.opcua_port:
                src.endpoint = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{args.opcua_port}"))
            opcua_port = urlsplit(src.endpoint).port or 4840
    return modbus_port, opcua_port


async def _demo(cfg, modbus_port: int, opcua_port: int) -> int:
    from simulators.local_broker import LocalBroker, port_open
    from simulators.runner import run_simulators

    stop = asyncio.Event()
    install_stop_signals(stop)
    up = cfg.all_uplinks[0]
    host, port = (up.host, up.port) if up.links is None else (up.links[0].host, up.links[0].port)
    broker = None
    if await asyncio.to_thread(port_open, host, port):
        print(f"An MQTT broker already listens on {host}:{port}; the demo uses it.", flush=True)
    else:
        broker = LocalBroker(host, port)
        await broker.start()
        print(f"MQTT broker ({broker.kind}) on {host}:{port}", flush=True)
    sims_stop = asyncio.Event()
    sims = asyncio.create_task(run_simulators(None, "127.0.0.1", modbus_port, opcua_port, stop_event=sims_stop))
    try:
        for _ in range(100):
            up = [await asyncio.to_thread(port_open, "127.0.0.1", p) for p in (modbus_port, opcua_port)]
            if sims.done() or all(up):
                break
            await asyncio.sleep(0.05)
        if sims.done():
            sims.result()  # raises why the simulators could not start
        ns = cfg.gateway.namespace
        api = f"http://{cfg.api.host}:{cfg.api.port}"
        print(
            "\n"
            f"  Dashboard     {api}/\n"
            f"  Status API    {api}/api/v1/assets   (per asset: {api}/api/v1/assets/press-3, docs: {api}/docs)\n"
            f"  Subscribe     mosquitto_sub -h {host} -p {port} -t '{ns}/#' -v\n"
            f"           or   .venv/bin/iiot-gateway sub -H {host} -p {port} '{ns}/#'\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        return await run_gateway(cfg, stop)
    finally:
        sims_stop.set()
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(sims, return_exceptions=True)
        except TimeoutError:
            sims.cancel()
        if broker is not None:
            await broker.close()


def main_demo(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if not path.exists():
        print(f"{path}: no such file (run the demo from the project folder, or pass --config)")
        return 2
    cfg = load_or_exit(str(path))
    modbus_port, opcua_port = _apply_overrides(cfg, args)
    return asyncio.run(_demo(cfg, modbus_port, opcua_port))
