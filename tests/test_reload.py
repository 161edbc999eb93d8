"""Hot reload on real parts: the gateway against the Modbus simulator and a real broker; the config file is
edited, then SIGHUP (a real process) or ``POST /api/v1/reload`` (in process) re-reads it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from e2e.harness import running_gateway
from helpers import NAMESPACE, free_port, gateway_config, reap, start_gateway, stop_gateway, wait_until

TOKEN = "reload-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ASSETS = """\
- id: press
  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 100ms, timeout: 1s, retry_max: 1s}}
  tags:
    - {{name: strokes, address: "40003", type: uint32, mode: raw}}
- id: line
  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 100ms, timeout: 1s, retry_max: 1s}}
  tags:
    - {{name: state, address: "40011", type: uint16, mode: raw}}
"""
EXTRA_TAG = '    - {name: oil_temp, address: "30001", type: int16, scale: 0.1}\n'


def config(tmp_path, broker, port: int) -> Path:
    return gateway_config(tmp_path, mqtt_port=broker.port, assets_yaml=ASSETS.format(port=port), api_port=free_port(),
                          api={"token": TOKEN})


def with_extra_tag(path: Path) -> str:
    """The file with ``oil_temp`` added after ``strokes``, at the same indentation."""
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "name: strokes" in line)
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    return "".join(lines[: at + 1] + [indent + EXTRA_TAG.lstrip()] + lines[at + 1:])


def raw_ts(sub, asset: str) -> list[int]:
    """Every raw sample time of ``asset``'s data messages, in seq order."""
    msgs = sorted((m.json() for m in sub.messages if m.topic == f"{NAMESPACE}/{asset}/data"), key=lambda m: m["seq"])
    return [t for m in msgs for e in m["tags"].values() if "raw" in e for t in e["raw"]["ts"]]


async def test_reload_adds_a_tag_without_a_gap_elsewhere_refuses_a_bad_file_and_rolls_back(
        tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim, caplog):
    path = config(tmp_path, mqtt_broker, modbus_sim.port)
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/data")
    async with running_gateway(path) as rg:
        rg.gw.config_path = str(path)
        gw = rg.gw
        assert await wait_until(lambda: len(raw_ts(sub, "line")) >= 10, timeout=15)
        line_ring = gw.assets["line"].ring
        good = path.read_text()

        # a broken file is refused with its file:line, and nothing changes
        path.write_text(good.replace("poll: 100ms", "poll: soon", 1))
        r = await rg.api.post("/api/v1/reload", headers=AUTH)
        assert r.status_code == 422 and any("poll" in e and "gateway.yaml:" in e for e in r.json()["errors"]), r.text
        assert [t.name for t in gw.assets["press"].tags] == ["strokes"]
        assert any("reload refused" in rec.getMessage() for rec in caplog.records)
        # no token, no reload
        assert (await rg.api.post("/api/v1/reload")).status_code == 401

        # one tag added to press: press restarts with it, line keeps running (same ring, no gap)
        path.write_text(good)
        path.write_text(with_extra_tag(path))
        before = len(raw_ts(sub, "line"))
        r = await rg.api.post("/api/v1/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["changed"] == {"assets_changed": ["press"]}, r.text
        assert [t.name for t in gw.assets["press"].tags] == ["strokes", "oil_temp"]
        assert gw.assets["line"].ring is line_ring
        assert await wait_until(lambda: any(m.topic.endswith("/press/data") and "oil_temp" in m.json()["tags"]
                                            for m in sub.messages), timeout=15)
        assert await wait_until(lambda: len(raw_ts(sub, "line")) >= before + 10, timeout=15)

        # a section that needs a restart is refused
        path.write_text(path.read_text().replace("seconds: 60", "seconds: 90", 1))
        r = await rg.api.post("/api/v1/reload", headers=AUTH)
        assert r.status_code == 409 and "buffer:" in r.json()["errors"][0], r.text

        # rollback: the config before the last reload
        r = await rg.api.post("/api/v1/reload?rollback=true", headers=AUTH)
        assert r.status_code == 200 and r.json()["changed"] == {"assets_changed": ["press"]}, r.text
        assert [t.name for t in gw.assets["press"].tags] == ["strokes"]
        assert gw.assets["line"].ring is line_ring
        await asyncio.sleep(0.5)
    # the other asset's samples never paused: no gap longer than a few polls across both reloads
    ts = raw_ts(sub, "line")
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert max(gaps) < 600, max(gaps)
    assert sorted(set(ts)) == ts  # each sample once, in order


async def test_sighup_reloads_the_file_of_a_running_process(tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim):
    path = config(tmp_path, mqtt_broker, modbus_sim.port)
    api_port = int(path.read_text().split("listen: 127.0.0.1:")[1].split()[0])
    sub = await mqtt_subscriber(f"{NAMESPACE}/press/data")
    proc = await start_gateway(path)
    try:
        assert await wait_until(lambda: len(sub.messages) >= 3, timeout=20)
        path.write_text(with_extra_tag(path))
        proc.send_signal(signal.SIGHUP)
        assert await wait_until(lambda: any("oil_temp" in m.json()["tags"] for m in sub.messages), timeout=15)
        async with httpx.AsyncClient() as client:
            detail = (await client.get(f"http://127.0.0.1:{api_port}/api/v1/assets/press")).json()
        assert detail["tags"] == 2 and [t["name"] for t in detail["tag_values"]] == ["strokes", "oil_temp"]
        assert proc.returncode is None  # still the same process
        await stop_gateway(proc)
    finally:
        await reap(proc)


async def test_a_changed_uplink_restarts_and_keeps_its_seq(tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim):
    path = config(tmp_path, mqtt_broker, modbus_sim.port)
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/data")
    async with running_gateway(path) as rg:
        rg.gw.config_path = str(path)
        assert await wait_until(lambda: len(sub.messages) >= 6, timeout=15)
        old_uplink = rg.gw.uplink
        path.write_text(path.read_text().replace("publish_interval: 200ms", "publish_interval: 300ms", 1))
        r = await rg.api.post("/api/v1/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["changed"] == {"uplinks_changed": ["mqtt"]}, r.text
        assert rg.gw.uplink is not old_uplink and rg.gw.publisher.profile.publish_interval == 0.3
        n = len(sub.messages)
        assert await wait_until(lambda: len(sub.messages) >= n + 6 and rg.gw.uplink.connected, timeout=15)
    seqs = sorted(m.json()["seq"] for m in sub.messages)
    assert seqs == list(range(1, len(seqs) + 1))  # one numbering across the restart of the uplink, nothing lost
