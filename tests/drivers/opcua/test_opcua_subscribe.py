"""Subscribe mode: values arrive through monitored items, the server-side deadband holds back small
changes, and the subscription survives a restart of the server (through the engine's reconnect)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
from asyncua import ua
from opcua_testserver import free_port

from drivers.opcua.config import OpcUaSource, OpcUaTag
from drivers.opcua.driver import OpcUaSubscriber
from drivers.opcua.plugin import SPEC
from drivers.opcua.subscription import item_request, split_bursts, to_batches
from gateway.batch import Quality
from gateway.driver import DriverContext, Shared
from gateway.source import AssetRuntime
from simulators.opcua_sim import OpcUaSimulator


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def history(ring, row: int) -> np.ndarray:
    """Every value the ring holds for tag ``row`` (the test never wraps the ring)."""
    return ring.values[row, : int(ring.head[row])].copy()


def subscribe_source(endpoint: str, **extra) -> OpcUaSource:
    return OpcUaSource(driver="opcua", endpoint=endpoint, mode="subscribe", poll="100ms", timeout="1s",
                       retry_max="1s", **extra)


async def test_values_deadband_and_server_restart(tmp_path) -> None:
    sim = OpcUaSimulator(port=free_port(), clock=False)
    sim.set("zone1_temp", 100.0)
    sim.set("running", True)
    await sim.start()
    tags = [
        OpcUaTag(name="temp", node="ns=2;s=Oven1.Zone1.Temperature", server_deadband=0.5),
        OpcUaTag(name="running", path="/Objects/2:Oven1/2:Running"),
    ]
    cfg = SimpleNamespace(id="oven", source=subscribe_source(sim.endpoint), tags=tags)
    asset = AssetRuntime(cfg, SPEC, buffer_seconds=600, state_dir=tmp_path, shared=Shared())
    assert asset.streaming and asset.driver.state_dir == tmp_path
    task = asyncio.create_task(asset.run())
    try:
        await wait_for(lambda: asset.ring.head[0] > 0 and asset.ring.head[1] > 0)
        assert history(asset.ring, 0)[-1] == 100.0 and history(asset.ring, 1)[-1] == 1.0
        assert asset.ring.quality[0, 0] == Quality.GOOD

        sim.set("zone1_temp", 100.2)  # inside the 0.5 deadband: the server keeps it back
        await asyncio.sleep(0.4)
        sim.set("zone1_temp", 101.0)
        await wait_for(lambda: history(asset.ring, 0)[-1] == 101.0)
        assert 100.2 not in history(asset.ring, 0)

        running_before = int(asset.ring.head[1])
        await sim.stop()
        await wait_for(lambda: asset.status.state == "disconnected")
        await sim.start()
        await wait_for(lambda: asset.status.state == "connected", timeout=15)
        # the full read after the reconnect reports the unchanged tag again, good
        await wait_for(lambda: asset.ring.head[1] > running_before + 1)
        assert history(asset.ring, 1)[-1] == 1.0
        sim.set("zone1_temp", 105.0)
        await wait_for(lambda: history(asset.ring, 0)[-1] == 105.0)
        assert asset.status.reconnects == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


async def test_subscribe_marks_unmonitorable_tags_bad(tmp_path) -> None:
    async with OpcUaSimulator(port=free_port(), clock=False) as sim:
        tags = [
            OpcUaTag(name="temp", node="ns=2;s=Oven1.Zone1.Temperature"),
            OpcUaTag(name="ghost", node="ns=2;s=Oven1.NoSuchNode"),
            OpcUaTag(name="lost", path="/Objects/2:Oven1/2:NoSuchNode"),
        ]
        drv = OpcUaSubscriber(subscribe_source(sim.endpoint), tags, DriverContext.detached("test", len(tags)))
        await drv.connect()
        try:
            stream = drv.subscribe()
            first = await anext(stream)
            assert first.index is None and len(first) == 3
            assert first.quality.tolist() == [Quality.GOOD, Quality.BAD, Quality.BAD]
            assert "BadNoMatch" in first.error_text[first.errors[2]]
            await stream.aclose()
        finally:
            await drv.close()


def test_bursts_split_so_no_batch_names_a_tag_twice() -> None:
    handles = np.array([3, 1, 3, 3, 0, 1])
    groups = split_bursts(handles)
    assert [handles[g].tolist() for g in groups] == [[3, 1, 0], [3, 1], [3]]
    assert [g.tolist() for g in groups] == [[0, 1, 4], [2, 5], [3]]  # arrival order kept per tag


def test_notifications_become_batches_with_index_and_scale() -> None:
    def item(handle: int, value: float) -> ua.MonitoredItemNotification:
        return ua.MonitoredItemNotification(ClientHandle=handle, Value=ua.DataValue(ua.Variant(value, ua.VariantType.Double)))

    scale, offset = np.array([1.0, 10.0]), np.array([0.0, 1.0])
    batches = to_batches([item(1, 2.0), item(1, 3.0), item(0, 7.0)], scale, offset)
    assert [b.index.tolist() for b in batches] == [[1, 0], [1]]
    assert batches[0].values.tolist() == [21.0, 7.0] and batches[1].values.tolist() == [31.0]


def test_monitored_item_parameters() -> None:
    src = subscribe_source("opc.tcp://127.0.0.1:4840/", publishing_interval="1s", sampling_interval="250ms")
    plain = item_request(4, ua.NodeId(1, 2), OpcUaTag(name="a", node="ns=2;i=1"), src)
    p = plain.RequestedParameters
    assert (p.ClientHandle, p.SamplingInterval, p.QueueSize) == (4, 250.0, 4)  # 4 samples per publish
    assert not isinstance(p.Filter, ua.DataChangeFilter)
    tag = OpcUaTag(name="b", node="ns=2;i=2", sampling_interval="50ms", queue_size=2,
                   server_deadband=2.5, server_deadband_type="percent")
    q = item_request(0, ua.NodeId(2, 2), tag, src).RequestedParameters
    assert (q.SamplingInterval, q.QueueSize) == (50.0, 2)
    assert q.Filter.DeadbandType == ua.DeadbandType.Percent and q.Filter.DeadbandValue == 2.5
