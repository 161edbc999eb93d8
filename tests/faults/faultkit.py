"""Shared pieces of the fault-injection suite: the assets of a config on simulated devices, spool inspection."""

from __future__ import annotations

from pathlib import Path

from helpers import NAMESPACE

from gateway.spool import Spool
from simulators.config import PlantConfig
from simulators.modbus_sim import ModbusSimulator
from simulators.plant import Plant

NS = NAMESPACE  # of the configs helpers.gateway_config writes


def plc_assets(devices: list[tuple[str, int]], *, tags: int = 10, poll: str = "100ms", mode: str = "raw",
               timeout: str = "500ms", retry_max: str = "2s") -> str:
    """The ``assets:`` list of a fault test (for :func:`helpers.gateway_config`): one Modbus TCP asset per
    ``(id, port)`` device, ``tags`` holding registers each."""
    assets = []
    for asset_id, port in devices:
        tag_lines = "\n".join(
            f"    - {{name: t{i:03d}, address: \"hr:{i}\", type: uint16, mode: {mode}}}" for i in range(tags)
        )
        assets.append(
            f"- id: {asset_id}\n  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: {poll},"
            f" timeout: {timeout}, retry_max: {retry_max}}}\n  tags:\n{tag_lines}\n"
        )
    return "".join(assets)


async def plc(registers: int = 128, *, port: int | None = None) -> ModbusSimulator:
    """The bundled Modbus simulator as the device of a fault test (started): ``registers`` holding registers,
    each a counter that steps every 100 ms, so every poll reads new values. Its fault knobs and the TCP proxy
    stand in for a hung or misbehaving device."""
    from helpers import free_port

    points = [{"name": f"r{i}", "address": f"hr:{i}", "type": "uint16", "signal": "tick"} for i in range(registers)]
    cfg = PlantConfig.model_validate({
        "seed": 1, "update_interval": "100ms",
        "signals": {"tick": {"kind": "counter", "start": 0, "step": 1, "interval": "100ms", "wrap": 65536}},
        "modbus": {"points": points},
    })
    sim = ModbusSimulator(Plant(cfg), host="127.0.0.1", port=port or free_port())
    await sim.start()
    return sim


def spooled_seqs(path: Path) -> list[int]:
    """The seq of every message held in a (closed) spool directory, oldest first."""
    s = Spool(path, max_bytes=2**40)
    s.open()
    try:
        return [rec.seq for _, rec in s.take(10**9)]
    finally:
        s.close()


def data_messages(sub) -> list[dict]:
    return [m.json() for m in sub.messages if m.topic.startswith(NS + "/") and m.topic.endswith("/data")]


class InProcess:
    """The real gateway on the test's event loop (``gw``), stopped on exit like SIGTERM would."""

    def __init__(self, config: Path) -> None:
        from gateway.config import load_config
        from gateway.daemon import build

        self.cfg = load_config(config)
        self.gw = build(self.cfg)
        self._stop = None
        self._task = None

    async def __aenter__(self):
        import asyncio

        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.gw.run(self._stop, self.gw.bind_api()))
        return self.gw

    async def stop(self) -> None:
        import asyncio

        self._stop.set()
        async with asyncio.timeout(15):
            await self._task

    async def __aexit__(self, *exc) -> None:
        if not self._task.done():
            await self.stop()


def samples_by_tag(messages: list[dict]) -> dict[str, list[int]]:
    """Per tag, the timestamps of every raw sample, messages taken in seq order (duplicates removed)."""
    out: dict[str, list[int]] = {}
    seen: set[int] = set()
    for m in sorted(messages, key=lambda m: m["seq"]):
        if m["seq"] in seen:
            continue
        seen.add(m["seq"])
        for name, entry in m["tags"].items():
            out.setdefault(name, []).extend(entry["raw"]["ts"])
    return out
