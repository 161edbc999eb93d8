"""Modbus TCP answers are checked against their requests: a mismatch is bad with a counted error, never good.

The bundled simulator's ``answer_fault`` knob serves each kind of mismatched answer the issue reported
(pymodbus accepts every one of them); a raw server checks that a stale answer after a timeout is dropped.
"""

from __future__ import annotations

import asyncio
import struct
import textwrap
from pathlib import Path

import pytest
from helpers import free_port
from pymodbus.exceptions import ModbusIOException

from drivers.modbus.check import MISMATCHED_ANSWER, answer_mismatch
from drivers.modbus.config import ModbusTag, ModbusTcpSource
from drivers.modbus.tcp import ModbusTcpDriver
from drivers.modbus.tcp_client import MbapClient, TcpCounters
from gateway.batch import Quality
from gateway.driver import DriverContext
from helpers import gateway_config
from simulators.config import ANSWER_FAULTS
from simulators.modbus_sim import ModbusSimulator
from simulators.plant import Plant

PLANT = """\
seed: 3
update_interval: 1s
modbus:
  unit: 1
  tables: {hr: 20, ir: 20, co: 16, di: 16}
  points:
    - {name: hr_a, address: "hr:0", type: uint16, value: 1234}
    - {name: hr_b, address: "hr:1", type: int16, value: -5}
    - {name: ir_a, address: "ir:0", type: uint16, value: 4321}
    - {name: ir_b, address: "ir:1", type: uint16, value: 7}
    - {name: co_a, address: "co:0", type: bool, value: true}
    - {name: co_b, address: "co:9", type: bool, value: false}
    - {name: di_a, address: "di:1", type: bool, value: true}
"""
TAGS = [
    ModbusTag(name="hr_a", address="hr:0", type="uint16"),
    ModbusTag(name="hr_b", address="hr:1", type="int16"),
    ModbusTag(name="ir_a", address="ir:0", type="uint16"),
    ModbusTag(name="ir_b", address="ir:1", type="uint16"),
    ModbusTag(name="co_a", address="co:0", type="bool"),
    ModbusTag(name="co_b", address="co:9", type="bool"),
    ModbusTag(name="di_a", address="di:1", type="bool"),
]
REGISTER_TAGS = {"hr_a", "hr_b", "ir_a", "ir_b"}
#: which tags each fault hits (the others are answered correctly and must stay good)
HIT = {
    "other_function": {t.name for t in TAGS},
    "transaction_id_zero": {t.name for t in TAGS},
    "wrong_unit": {t.name for t in TAGS},
    "extra_register": REGISTER_TAGS,
    "odd_byte_count": REGISTER_TAGS,
    "bits_byte_count_high": {t.name for t in TAGS} - REGISTER_TAGS,
    "bits_byte_count_low": {t.name for t in TAGS} - REGISTER_TAGS,
}


def plant(tmp_path: Path) -> Plant:
    path = tmp_path / "plant.yaml"
    path.write_text(textwrap.dedent(PLANT))
    return Plant.load(path)


def driver(port: int) -> ModbusTcpDriver:
    return ModbusTcpDriver(ModbusTcpSource(driver="modbus_tcp", host="127.0.0.1", port=port, unit=1, timeout=1), TAGS, DriverContext.detached("test", len(TAGS)))


@pytest.mark.parametrize("fault", ANSWER_FAULTS)
async def test_each_kind_of_mismatched_answer_is_bad_and_counted(tmp_path: Path, fault: str) -> None:
    sim = ModbusSimulator(plant(tmp_path), port=0, answer_fault=fault)
    sim.port = free_port()
    async with sim:
        d = driver(sim.port)
        await d.connect()
        try:
            batches = [await d.read() for _ in range(3)]
        finally:
            await d.close()
    assert sim.faulted_answers > 0
    for batch in batches:
        for i, tag in enumerate(TAGS):
            if tag.name in HIT[fault]:
                assert batch.quality[i] == Quality.BAD, (fault, tag.name)
                assert batch.errors[i] == MISMATCHED_ANSWER
                assert "does not match its request" in batch.error_text[MISMATCHED_ANSWER]
            else:
                assert batch.quality[i] == Quality.GOOD, (fault, tag.name)
                assert batch.values[i] == float(sim.value_of(tag.name))
    hit = {i for i, t in enumerate(TAGS) if t.name in HIT[fault]}
    requests_hit = sum(1 for r in d.plan.requests if hit & set(r.positions.tolist()))
    assert d.counters()["mismatched_answers"] == 3 * requests_hit


async def test_correct_answers_of_the_simulator_are_all_good(tmp_path: Path) -> None:
    sim = ModbusSimulator(plant(tmp_path), port=free_port())
    async with sim:
        d = driver(sim.port)
        await d.connect()
        try:
            batch = await d.read()
        finally:
            await d.close()
    assert (batch.quality == Quality.GOOD).all()
    assert batch.values.tolist() == [float(sim.value_of(t.name)) for t in TAGS]
    assert d.counters()["mismatched_answers"] == 0 and d.counters()["answers"] == len(d.plan.requests)


async def test_a_stale_answer_after_a_timeout_is_dropped_not_taken_for_the_next_one() -> None:
    """The server answers request 1 only after the client gave up on it, right before answering request 2."""
    held: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                header = await reader.readexactly(7)
            except asyncio.IncompleteReadError:
                return
            tid, _, length, unit = struct.unpack(">HHHB", header)
            pdu = await reader.readexactly(length - 1)
            start, count = struct.unpack(">HH", pdu[1:5])
            value = 0xBAD0 if not held else 42  # request 1 would be answered with a marker value
            answer = bytes((3, 2 * count)) + struct.pack(f">{count}H", *([value] * count))
            frame = struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer
            if not held:
                held.append(frame)  # no answer in time
                continue
            writer.write(held.pop() + frame)  # the late answer first, then the right one
            held.append(b"")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    counters = TcpCounters()
    client = MbapClient("127.0.0.1", port, timeout=0.3, counters=counters, name="test")
    try:
        assert await client.connect()
        with pytest.raises(ModbusIOException, match="No response"):
            await client.read_holding_registers(0, count=2, device_id=1)
        answer = await client.read_holding_registers(0, count=2, device_id=1)
        assert list(answer.registers) == [42, 42]
        assert counters.stale_answers == 1 and counters.timeouts == 1 and counters.mismatched_answers == 0
    finally:
        client.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("request_pdu", "answer", "why"),
    [
        (b"\x03\x00\x00\x00\x02", b"\x03\x04\x00\x01\x00\x02", None),
        (b"\x03\x00\x00\x00\x02", b"\x83\x02", None),
        (b"\x03\x00\x00\x00\x02", b"\x04\x04\x00\x01\x00\x02", "function code 4"),
        (b"\x03\x00\x00\x00\x02", b"\x03\x06\x00\x01\x00\x02\x00\x03", "byte count 6"),
        (b"\x03\x00\x00\x00\x02", b"\x03\x03\x00\x01\x00", "byte count 3"),
        (b"\x03\x00\x00\x00\x02", b"\x03\x04\x00\x01\x00", "3 data bytes"),
        (b"\x01\x00\x00\x00\x0a", b"\x01\x02\x05\x00", None),
        (b"\x01\x00\x00\x00\x0a", b"\x01\x01\x05", "byte count 1"),
        (b"\x01\x00\x00\x00\x0a", b"\x01\x03\x05\x00\x00", "byte count 3"),
        (b"\x06\x00\x01\x00\x07", b"\x06\x00\x01\x00\x08", "does not echo"),
        (b"\x10\x00\x01\x00\x02\x04\x00\x01\x00\x02", b"\x10\x00\x01\x00\x02", None),
        (b"\x03\x00\x00\x00\x02", b"", "empty answer"),
        (b"\x03\x00\x00\x00\x02", b"\x83\x02\x00", "exception answer of 3 bytes"),
    ],
)
def test_answer_mismatch(request_pdu: bytes, answer: bytes, why: str | None) -> None:
    got = answer_mismatch(request_pdu, answer)
    assert (got is None) if why is None else (got is not None and why in got)




async def test_mismatched_answers_are_counted_on_the_status_api(tmp_path: Path, mqtt_broker) -> None:
    """What an integrator sees: the tags bad with the mismatch text, the count under driver_counters."""
    from e2e.harness import running_gateway
    sim = ModbusSimulator(plant(tmp_path), port=free_port(), answer_fault="other_function")
    assets = f"""\
        - id: press-1
          source: {{driver: modbus_tcp, host: 127.0.0.1, port: {sim.port}, unit: 1, poll: 100ms, timeout: 1s}}
          tags:
            - {{name: hr_a, address: "hr:0", type: uint16}}
            - {{name: co_a, address: "co:0", type: bool}}
        """
    api_port = free_port()
    async with sim:
        path = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, assets_yaml=assets, api_port=api_port)
        async with running_gateway(path) as gw:
            for _ in range(100):  # until the asset has polled a few times
                detail = (await gw.api.get("/api/v1/assets/press-1")).json()
                if (detail.get("driver_counters") or {}).get("mismatched_answers", 0) >= 4:
                    break
                await asyncio.sleep(0.1)
    assert detail["state"] == "connected"  # a mismatched answer is not a lost device
    counters = detail["driver_counters"]
    assert counters["mismatched_answers"] >= 4 and counters["answers"] == 0
    assert {tag["name"]: tag["quality"] for tag in detail["tag_values"]} == {"hr_a": "bad", "co_a": "bad"}
    assert all("does not match its request" in tag["error"] for tag in detail["tag_values"])
