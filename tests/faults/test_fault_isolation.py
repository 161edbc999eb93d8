"""One of ten Modbus devices misbehaves (hangs, resets every connection, or answers only exceptions):
the other nine keep at least 99 % of their scheduled polls; the bad one is retried with capped backoff.

The devices are the bundled simulator; a hung one is a simulator behind the TCP proxy's black hole, one that
answers only exceptions a simulator whose table is smaller than the tags; only "resets every connection at
once" needs a fake (tests/faults/fakes.py): nothing real here refuses a connection that way."""

from __future__ import annotations

import asyncio

import pytest

from fakes import FakeModbus
from faultkit import InProcess, plc, plc_assets
from helpers import TcpProxy, gateway_config

INTERVAL = 0.1
WINDOW = 8.0
TIMEOUT = 0.5
RETRY_MAX = 2.0


@pytest.mark.parametrize("kind", ["hung", "reset", "exceptions"])
async def test_a_bad_device_does_not_disturb_the_other_nine(tmp_path, mqtt_broker, kind):
    good = [await plc(10) for _ in range(9)]
    behind = None
    if kind == "reset":
        bad = await FakeModbus("reset").start()
    elif kind == "hung":  # accepts the connection, never answers
        behind = await plc(10)
        bad = TcpProxy("127.0.0.1", behind.port)
        await bad.accept()
        bad.blackhole()
    else:  # the tags ask for registers 0..9 of a device with one: Modbus exception 2 (illegal data address)
        bad = await plc(1)
    devices = [(f"dev{i}", d.port) for i, d in enumerate(good)] + [("bad", bad.port)]
    cfg = gateway_config(
        tmp_path,
        mqtt_port=mqtt_broker.port,
        mqtt={"publish_interval": "500ms"},
        assets_yaml=plc_assets(
            devices, tags=10, poll="100ms", mode="rbe", timeout=f"{TIMEOUT}s", retry_max=f"{RETRY_MAX}s"
        ),
    )
    loop = asyncio.get_running_loop()
    try:
        async with InProcess(cfg) as gw:
            await asyncio.sleep(2.0)  # connected and polling
            t0, polls0 = loop.time(), {a: gw.assets[a].status.polls for a, _ in devices}
            bad_connections0 = getattr(bad, "connections", 0)
            await asyncio.sleep(WINDOW)
            elapsed = loop.time() - t0
            polls = {a: gw.assets[a].status.polls - polls0[a] for a, _ in devices}
            bad_status = gw.assets["bad"].status
    finally:
        for d in good:
            await d.stop()
        await (bad.close() if isinstance(bad, TcpProxy) else bad.stop())
        if behind is not None:
            await behind.stop()
    scheduled = elapsed / INTERVAL
    for asset, n in polls.items():
        if asset != "bad":
            assert n >= 0.99 * scheduled - 1, f"{asset}: {n} polls of {scheduled:.0f} scheduled"
    if kind == "exceptions":
        assert bad_status.tag_errors > 0  # answered, every tag bad: polling goes on at its rate
    else:
        assert polls["bad"] == 0 and bad_status.last_error is not None
        # retried all along with a backoff capped at retry_max (2 s, drawn up to +20 %): neither given up nor
        # hammered at poll rate. One attempt lasts at most the backoff plus, for a hung device, the poll's
        # timeout (0.5 s) before it gives up, so the window holds at least WINDOW // that many attempts.
        longest = RETRY_MAX * 1.2 + (TIMEOUT if kind == "hung" else 0.0) + 0.1
        attempts = bad.connections - bad_connections0
        assert WINDOW // longest <= attempts <= WINDOW / 0.8 + 2, attempts
