"""Fixtures of the Modbus RTU tests: a simulated RS-485 line on a pty."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

import pytest
from rtu_helpers import slave_with

from simulators.modbus_rtu_sim import ModbusRtuSimulator


@pytest.fixture
async def line() -> AsyncIterator[ModbusRtuSimulator]:
    """Slaves 1, 2 and 3 on one pty line; slave n holds float32 n*1.5 at hr:0 and int16 -n at hr:2."""
    slaves = {n: slave_with({0: ("float32", n * 1.5, "ABCD"), 2: ("int16", -n, "ABCD")}) for n in (1, 2, 3)}
    sim = ModbusRtuSimulator(slaves)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
        gc.collect()  # drop this test's drivers, so the next test's pty (same /dev/pts/N) gets a fresh arbiter
