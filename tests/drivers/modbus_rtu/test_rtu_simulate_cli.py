"""``iiot-gateway simulate --rtu`` serves the plant's point map as RTU slaves on a pty and prints the path."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from rtu_helpers import driver, tag

from gateway.batch import Quality
from simulators.runner import run_simulators

PLANT = """
seed: 1
update_interval: 100ms
signals:
  level: {kind: constant, value: 42.5}
modbus:
  unit: 1
  tables: {hr: 20, ir: 20, co: 16, di: 16}
  points:
    - {name: level, address: "40001", type: float32, byte_order: CDAB, signal: level}
"""


async def test_simulate_rtu_prints_a_pty_path_that_serves_the_point_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plant = tmp_path / "plant.yaml"
    plant.write_text(PLANT)
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulators(plant, rtu_units=(1, 9), stop_event=stop))
    try:
        path = None
        for _ in range(100):
            m = re.search(r"Modbus RTU PLC  (\S+)  units 1,9", capsys.readouterr().out)
            if m:
                path = m.group(1)
                break
            await asyncio.sleep(0.05)
        assert path is not None
        sim = type("Line", (), {"path": path})()
        d = driver(sim, 9, [tag("level", "40001", "float32", byte_order="CDAB")])
        await d.connect()
        batch = await d.read()
        await d.close()
        assert batch.quality[0] == Quality.GOOD and batch.values[0] == 42.5
    finally:
        stop.set()
        await task
