"""Half-open uplink (packets silently discarded, nothing closed): detected within 2 x keepalive; nothing
counts as delivered without a PUBACK; everything arrives once the path is back."""

from __future__ import annotations

import asyncio

from faultkit import NS, InProcess, data_messages, plc, plc_assets
from helpers import TcpProxy, gateway_config, wait_until

KEEPALIVE = 5.0


async def test_half_open_link_is_detected_and_nothing_is_lost(tmp_path, mqtt_broker, mqtt_subscriber):
    dev = await plc()
    proxy = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await proxy.accept()
    cfg = gateway_config(tmp_path, mqtt_port=proxy.port, assets_yaml=plc_assets([("press", dev.port)]))
    sub = await mqtt_subscriber(f"{NS}/+/data")
    loop = asyncio.get_running_loop()
    try:
        async with InProcess(cfg) as gw:
            assert await wait_until(lambda: len(sub.messages) >= 3, timeout=15)
            proxy.blackhole()
            t0 = loop.time()
            delivered = gw.delivery.delivered
            assert await wait_until(lambda: not gw.uplink.connected, timeout=2 * KEEPALIVE + 2)
            detected = loop.time() - t0
            assert gw.delivery.delivered <= delivered + 0  # no PUBACK came through the black hole
            await asyncio.sleep(1)
            assert gw.delivery.delivered == delivered and gw.delivery.backlog.messages > 0
            proxy.blackhole(False)
            proxy.cut()
            assert await wait_until(lambda: gw.uplink.connected and gw.delivery.backlog.messages == 0
                                    and not gw.delivery.stats()["inflight"], timeout=20)
        await asyncio.sleep(0.5)
    finally:
        await proxy.close()
        await dev.stop()
    assert detected <= 2 * KEEPALIVE
    seqs = sorted({m["seq"] for m in data_messages(sub)})
    assert seqs == list(range(1, seqs[-1] + 1))
