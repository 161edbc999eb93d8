"""Spool quota smaller than the outage: exactly the configured policy, counters right, gateway healthy."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from faultkit import NS, InProcess, data_messages, plc, plc_assets
from helpers import TcpProxy, free_port, gateway_config, wait_until


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_quota_smaller_than_the_outage(tmp_path, mqtt_broker, mqtt_subscriber, policy):
    dev = await plc()
    proxy = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await proxy.accept()
    api_port = free_port()
    cfg = gateway_config(tmp_path, mqtt_port=proxy.port, api_port=api_port,
                         assets_yaml=plc_assets([("press", dev.port)], tags=60, poll="100ms"),
                         spool={"max_bytes": 65536, "policy": policy, "replay_rate": 200})
    sub = await mqtt_subscriber(f"{NS}/+/data")
    try:
        async with InProcess(cfg) as gw:
            assert await wait_until(lambda: len(sub.messages) >= 3, timeout=15)
            await proxy.refuse()
            proxy.cut()  # the uplink is down
            assert await wait_until(lambda: gw.delivery.backlog.dropped_messages >= 10, timeout=25)
            await proxy.accept()
            assert await wait_until(lambda: gw.delivery.backlog.messages == 0, timeout=30)
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{api_port}/livez")).status_code == 200
                status = (await client.get(f"http://127.0.0.1:{api_port}/api/v1/gateway")).json()
            n = len(sub.messages)
            assert await wait_until(lambda: len(sub.messages) >= n + 3, timeout=10)  # live data flows again
        polled = int(gw.assets["press"].ring.head.sum())
        stats = gw.delivery.stats()
        await asyncio.sleep(0.5)
    finally:
        await proxy.close()
        await dev.stop()
    msgs = {m["seq"]: m for m in data_messages(sub)}
    top = max(msgs)
    missing = sorted(set(range(1, top + 1)) - set(msgs))
    assert len(missing) == stats["dropped_messages"] >= 10
    assert status["spool"]["dropped_messages"] >= 10 and status["spool"]["max_bytes"] == 65536
    replayed = sorted(s for s, m in msgs.items() if m.get("replay"))
    assert replayed
    if policy == "drop_oldest":
        assert max(missing) < min(replayed)  # the oldest went, the newest stayed
    else:
        assert min(missing) > max(replayed)  # the newest were refused, the oldest kept
    received_samples = sum(len(e["raw"]["ts"]) for m in msgs.values() for e in m["tags"].values())
    assert received_samples + stats["dropped_samples"] == polled
