"""A spool damaged by power loss (cut or corrupted at a random point) or missing a segment: the gateway starts,
replays every intact record and counts the damaged or lost ones on its status API."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from faultkit import NS, InProcess, data_messages, plc, plc_assets
from gateway.spool import Spool, SpoolRecord, decode_records
from helpers import free_port, gateway_config, wait_until


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
async def test_gateway_starts_on_a_damaged_spool_and_keeps_every_intact_record(
    tmp_path, mqtt_broker, mqtt_subscriber, damage
):
    rnd = random.Random(damage)
    spool_dir = tmp_path / "state" / "spool" / "backlog"
    s = Spool(spool_dir, max_bytes=1 << 24)
    s.open()
    body = lambda seq: json.dumps({"seq": seq, "ts": 0, "asset": "old", "tags": {"x": {"v": seq}}}).encode()  # noqa: E731
    placed = s.append([SpoolRecord(q, f"{NS}/old/data", body(q), 1, q) for q in range(1, 41)])
    s.close()
    seg = sorted(spool_dir.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    at = rnd.randrange(len(data) // 4, len(data) - 1)
    if damage == "truncate":
        del data[at:]
        intact = {rec.seq for rec, a, b in placed if b <= at}
    else:
        data[at] ^= 0x5A
        intact = {rec.seq for rec, a, b in placed if not a <= at < b}
    seg.write_bytes(bytes(data))

    dev = await plc()
    api_port = free_port()
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=api_port, mqtt={"publish_interval": "500ms"},
                         assets_yaml=plc_assets([("press", dev.port)]))
    sub = await mqtt_subscriber(f"{NS}/+/data")
    try:
        async with InProcess(cfg):
            assert await wait_until(lambda: intact <= {m["seq"] for m in data_messages(sub)}, timeout=20)
            async with httpx.AsyncClient() as client:
                status = (await client.get(f"http://127.0.0.1:{api_port}/api/v1/gateway")).json()
            assert await wait_until(lambda: any(m["asset"] == "press" for m in data_messages(sub)), timeout=10)
    finally:
        await dev.stop()
    old = [m for m in data_messages(sub) if m["asset"] == "old"]
    assert {m["seq"] for m in old} == intact and all(m["replay"] for m in old)
    assert [m["seq"] for m in old] == sorted(m["seq"] for m in old)
    assert status["spool"]["damaged_records"] == 1 and status["spool"]["damaged_bytes"] > 0
    new = [m["seq"] for m in data_messages(sub) if m["asset"] == "press"]
    assert min(new) > max(intact)  # numbering continues after what the spool holds


async def test_a_middle_segment_deleted_before_start_is_counted_as_dropped(tmp_path, mqtt_broker, mqtt_subscriber):
    """Someone (or a broken SD card) removed a segment from the middle of the backlog: the rest is replayed,
    and the status API counts the messages that were in it as dropped (reason lost), with their seq range."""
    spool_dir = tmp_path / "state" / "spool" / "backlog"
    s = Spool(spool_dir, max_bytes=1 << 24, segment_bytes=4096)
    s.open()
    body = lambda seq: json.dumps({"seq": seq, "ts": 0, "asset": "old", "tags": {"x": {"v": seq}}}).encode()  # noqa: E731
    s.append([SpoolRecord(q, f"{NS}/old/data", body(q), 1, q) for q in range(1, 121)])
    s.close()
    segs = sorted(spool_dir.glob("*.seg"))
    assert len(segs) >= 4
    gone = {rec.seq for _, _, rec in decode_records(segs[1].read_bytes()).records}
    segs[1].unlink()
    kept = set(range(1, 121)) - gone

    dev = await plc()
    api_port = free_port()
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=api_port, mqtt={"publish_interval": "500ms"},
                         spool={"replay_rate": 500}, assets_yaml=plc_assets([("press", dev.port)]))
    sub = await mqtt_subscriber(f"{NS}/+/data")
    try:
        async with InProcess(cfg) as gw:
            assert await wait_until(lambda: kept <= {m["seq"] for m in data_messages(sub)}, timeout=20)
            async with httpx.AsyncClient() as client:
                status = (await client.get(f"http://127.0.0.1:{api_port}/api/v1/gateway")).json()
            backlog = gw.delivery.backlog
            assert backlog.lost_messages == len(gone) and backlog.lost_segments == 1
            assert backlog.lost_ranges == [(min(gone), max(gone))]
    finally:
        await dev.stop()
    assert not gone & {m["seq"] for m in data_messages(sub)}
    assert status["spool"]["dropped_messages"] == len(gone)
    assert status["spool"]["damaged_records"] == 0
