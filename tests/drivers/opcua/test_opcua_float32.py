"""OPC UA Float values are published as the device gives them: at float32 precision, like Modbus float32.

A tester saw ``1.46696162223816`` for a Float the PLC holds as ``1.4669616``: the float32 widened to float64
carries digits the device never had. The driver declares its Float tags (``float32_tags``, learnt from the
values' types) and the publisher rounds them; Double values keep every digit they have.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
from opcua_testserver import free_port

from drivers.opcua.config import OpcUaSource, OpcUaTag
from drivers.opcua.plugin import SPEC
from gateway.driver import Shared
from gateway.encoders.json import tags_object
from gateway.reduce import Reducer
from gateway.source import AssetRuntime
from simulators.opcua_sim import OpcUaSimulator

TAGS = [
    OpcUaTag(name="f", node="ns=2;s=Oven1.Bench.Float"),
    OpcUaTag(name="d", node="ns=2;s=Oven1.Bench.Double"),
    OpcUaTag(name="scaled", node="ns=2;s=Oven1.Bench.Float", scale=10),
    OpcUaTag(name="i", node="ns=2;s=Oven1.Bench.Int32"),
]


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_float_values_are_published_at_float32_precision(tmp_path, mode) -> None:
    async with OpcUaSimulator(port=free_port(), clock=False) as sim:
        sim.set("b_float", 1.4669616)
        sim.set("b_double", 1.46696162223816)
        source = OpcUaSource(driver="opcua", endpoint=sim.endpoint, mode=mode, poll="100ms", timeout="2s")
        cfg = SimpleNamespace(id="oven", source=source, tags=TAGS)
        asset = AssetRuntime(cfg, SPEC, buffer_seconds=60, state_dir=tmp_path, shared=Shared())
        task = asyncio.create_task(asset.run())
        try:
            await wait_for(lambda: bool((asset.ring.head > 0).all()))
            assert asset.ring.values[0, 0] == float(np.float32(1.4669616))  # the ring keeps what was read
            assert asset.driver.float32_tags.tolist() == [True, False, True, False]
            assert asset.meta.integer.tolist() == [False, False, False, True]  # an Int32 node, learnt from its value
            reducer = Reducer(
                asset.tags, asset.ring, heartbeat=60, float32=asset.meta.float32, integer=asset.meta.integer
            )  # as a publisher's
            out = tags_object(reducer.reduce(time.monotonic()))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert out["f"]["v"] == 1.4669616
    assert out["d"]["v"] == 1.46696162223816  # a Double is not rounded
    assert out["scaled"]["v"] == 14.669617  # scaled first, then float32 precision (as Modbus float32 tags)
    assert out["i"]["v"] == -123456789 and type(out["i"]["v"]) is int  # a JSON integer, not -123456789.0
