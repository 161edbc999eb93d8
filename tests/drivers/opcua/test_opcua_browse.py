"""``iiot-gateway browse`` against the bundled OPC UA simulator: ``nsu=`` node ids, writable nodes marked,
and the printed lines work as they are when pasted into a config."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from opcua_testserver import free_port

from drivers.opcua.config import OpcUaSource, OpcUaTag
from drivers.opcua.driver import OpcUaDriver
from gateway.driver import DriverContext
from simulators.opcua_sim import OpcUaSimulator

ROOT = Path(__file__).resolve().parents[3]
_NODE = re.compile(r'node: "([^"]+)"')


async def browse(endpoint: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "browse", endpoint, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def line_with(out: str, text: str) -> str:
    return next(ln for ln in out.splitlines() if text in ln)


async def test_browse_prints_namespace_uris_and_marks_writable_nodes(tmp_path) -> None:
    async with OpcUaSimulator(port=free_port(), clock=False) as sim:
        sim.set("zone1_temp", 181.25)
        code, out, err = await browse(sim.endpoint)
        assert code == 0, err
        temp = line_with(out, "path: /Objects/2:Oven1/2:Zone1/2:Temperature")
        setpoint = line_with(out, "path: /Objects/2:Oven1/2:Setpoint")
        assert 'node: "nsu=urn:acme:oven;s=Oven1.Zone1.Temperature"' in temp
        assert 'node: "nsu=urn:acme:oven;i=1001"' in setpoint
        assert "ns=2;" not in out  # no namespace index anywhere: it may change when the server restarts
        assert "# Double, writable  path:" in setpoint  # the plant's setpoint is writable
        assert "writable" not in temp  # a measured value is read-only
        assert not any("writable: true" in ln for ln in out.splitlines() if ln.lstrip().startswith("- "))  # hinted only
        assert "# /Objects/2:Oven1  (Object, nsu=urn:acme:oven;s=Oven1)" in out

        # pasted as they are, the node ids read the same nodes
        tags = [OpcUaTag(name="temp", node=_NODE.search(temp).group(1)),
                OpcUaTag(name="setpoint", node=_NODE.search(setpoint).group(1))]  # fmt: skip
        drv = OpcUaDriver(OpcUaSource(driver="opcua", endpoint=sim.endpoint, timeout="2s"), tags, DriverContext.detached("test", len(tags)))
        await drv.connect()
        try:
            batch = await drv.read()
        finally:
            await drv.close()
    assert batch.values.tolist() == [181.25, 180.0]
