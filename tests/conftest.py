"""Fixtures shared by the whole suite. Helper classes live in ``tests/helpers.py``.

``IIOT_TEST_BROKER=embedded`` makes ``mqtt_broker`` use the embedded broker even where Mosquitto is installed;
``IIOT_TEST_BROKER=amqtt`` the PyPI broker amqtt (if installed), to compare it with ours.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from helpers import (
    AmqttBrokerHandle,
    EmbeddedBrokerHandle,
    MosquittoBroker,
    MqttSubscriber,
    free_port,
    mosquitto_binary,
)

from tahu import Tahu, make_tahu

from simulators.modbus_sim import ModbusSimulator
from simulators.opcua_sim import OpcUaSimulator


async def _started(kind: str, tmp_path) -> MosquittoBroker | EmbeddedBrokerHandle:
    if kind == "mosquitto":
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("no mosquitto binary on this machine")
        broker: MosquittoBroker | EmbeddedBrokerHandle = MosquittoBroker(tmp_path)
    elif kind == "amqtt":
        pytest.importorskip("amqtt", reason="amqtt is not installed (pip install amqtt), only compared in tests")
        broker = AmqttBrokerHandle()
    else:
        broker = EmbeddedBrokerHandle()
    await broker.start()
    return broker


@pytest.fixture
async def mqtt_broker(tmp_path) -> AsyncIterator[MosquittoBroker | EmbeddedBrokerHandle]:
    """A running MQTT broker on a free port of 127.0.0.1: Mosquitto where installed, else the embedded one.

    Has ``.host``, ``.port``, ``.kind`` and async ``stop()`` / ``start()`` (same port) for outage tests.
    """
    wanted = os.environ.get("IIOT_TEST_BROKER")
    if wanted not in ("embedded", "amqtt"):
        wanted = "mosquitto" if mosquitto_binary() is not None else "embedded"
    broker = await _started(wanted, tmp_path)
    yield broker
    await broker.stop()


#: amqtt is compared only where someone installed it (pip install amqtt): no skipped runs where it is not
BROKER_KINDS = ["mosquitto", "embedded"] + (["amqtt"] if importlib.util.find_spec("amqtt") else [])


@pytest.fixture(params=BROKER_KINDS)
async def any_mqtt_broker(request, tmp_path) -> AsyncIterator[MosquittoBroker | EmbeddedBrokerHandle]:
    """Each broker kind in turn, for broker-agnostic tests. Mosquitto is skipped where not installed, amqtt where
    not installed (it is only compared, never used: tests/test_mqtt_broker.py marks where it falls short)."""
    broker = await _started(request.param, tmp_path)
    yield broker
    await broker.stop()


@pytest.fixture
async def mqtt_subscriber(mqtt_broker) -> AsyncIterator[Callable[..., Awaitable[MqttSubscriber]]]:
    """Factory: ``sub = await mqtt_subscriber("acme/#")`` -> a subscribed :class:`helpers.MqttSubscriber` on
    the ``mqtt_broker`` fixture's broker (or on ``broker=`` another one). All are closed at teardown."""
    subscribers: list[MqttSubscriber] = []

    async def make(topic_filter: str = "#", *, broker=None, qos: int = 1) -> MqttSubscriber:
        target = broker or mqtt_broker
        sub = MqttSubscriber(target.host, target.port, topic_filter, qos=qos)
        subscribers.append(sub)
        return await sub.start()

    yield make
    for sub in subscribers:
        sub.close()


@pytest.fixture
async def modbus_sim() -> AsyncIterator[ModbusSimulator]:
    """The bundled Modbus TCP PLC (the default plant) on a free port."""
    sim = ModbusSimulator(None, host="127.0.0.1", port=free_port())
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def opcua_sim() -> AsyncIterator[OpcUaSimulator]:
    """The bundled OPC UA PLC (the default plant) on a free port."""
    sim = OpcUaSimulator(None, host="127.0.0.1", port=free_port(), clock=False)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture(scope="session")
def tahu() -> Tahu:
    """Eclipse Tahu's JS Sparkplug codec (tests/tahu.py), installed on first use."""
    return make_tahu()
