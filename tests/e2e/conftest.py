from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpers import free_port
from simulators.modbus_sim import ModbusSimulator
from simulators.opcua_sim import OpcUaSimulator


@pytest.fixture
async def modbus_sim() -> AsyncIterator[ModbusSimulator]:
    sim = ModbusSimulator(None, host="127.0.0.1", port=free_port())
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def opcua_sim() -> AsyncIterator[OpcUaSimulator]:
    sim = OpcUaSimulator(None, host="127.0.0.1", port=free_port())
    await sim.start()
    yield sim
    await sim.stop()
