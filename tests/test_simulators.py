"""The software PLCs, checked over real sockets with plain pymodbus / asyncua clients.

Expected register contents are computed here with ``struct`` and explicit byte permutations, not with
``simulators.codec``, so an encoding bug in the simulator cannot pass by agreeing with itself.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from helpers import free_port, wait_until
from simulators.config import PlantConfigError, load_plant_config
from simulators.modbus_sim import ModbusSimulator
from simulators.opcua_sim import OpcUaSimulator
from simulators.plant import Plant
from simulators.runner import main_simulate, run_simulators

ROOT = Path(__file__).resolve().parents[1]

# byte positions of the big-endian value (A = 0) in register order, per byte order
PERMUTATIONS = {
    2: {"ABCD": [0, 1], "BADC": [1, 0]},
    4: {"ABCD": [0, 1, 2, 3], "CDAB": [2, 3, 0, 1], "BADC": [1, 0, 3, 2], "DCBA": [3, 2, 1, 0]},
    8: {
        "ABCD": [0, 1, 2, 3, 4, 5, 6, 7],
        "CDAB": [6, 7, 4, 5, 2, 3, 0, 1],
        "BADC": [1, 0, 3, 2, 5, 4, 7, 6],
        "DCBA": [7, 6, 5, 4, 3, 2, 1, 0],
    },
}
STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
          "int64": ">q", "uint64": ">Q", "float64": ">d"}  # fmt: skip


def expected_words(type_: str, value, order: str) -> list[int]:
    big = struct.pack(STRUCT[type_], value)
    arranged = bytes(big[i] for i in PERMUTATIONS[len(big)][order])
    return [int.from_bytes(arranged[i : i + 2], "big") for i in range(0, len(arranged), 2)]


def words_to_bytes(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(2, "big") for w in words)


# the test bench of simulators/plant.yaml: name, table, 0-based offset, type, byte order, value
BENCH = [
    ("b_int16_abcd", "hr", 100, "int16", "ABCD", -12345),
    ("b_int16_badc", "hr", 101, "int16", "BADC", -12345),
    ("b_uint16_abcd", "hr", 102, "uint16", "ABCD", 54321),
    ("b_uint16_badc", "hr", 103, "uint16", "BADC", 54321),
    *[(f"b_{t}_{o.lower()}", "hr", base + step * i, t, o, v)
      for t, base, step, v in [("int32", 110, 2, -123456789), ("uint32", 120, 2, 3000000001),
                               ("float32", 130, 2, -1234.5), ("int64", 140, 4, -1234567890123),
                               ("uint64", 160, 4, 2**64 - 2048), ("float64", 180, 4, -98765.4321)]
      for i, o in enumerate(["ABCD", "CDAB", "BADC", "DCBA"])],
    ("b_ir_int16", "ir", 100, "int16", "ABCD", -300),
    ("b_ir_uint16", "ir", 101, "uint16", "BADC", 40000),
    ("b_ir_float32", "ir", 102, "float32", "CDAB", 21.5),
    ("b_ir_uint32", "ir", 104, "uint32", "DCBA", 4000000000),
    ("b_ir_int64", "ir", 106, "int64", "BADC", -5),
]  # fmt: skip
# a second value per type, to check set() encodes it too
OTHER = {"int16": 321, "uint16": 65535, "int32": 7, "uint32": 1, "float32": 0.15625, "int64": -(2**62),
         "uint64": 2**63 + 4096, "float64": 1e-300}  # fmt: skip


@pytest.fixture
def plant() -> Plant:
    return Plant.load()


@pytest.fixture
async def modbus_sim(plant):
    sim = ModbusSimulator(plant, port=free_port())
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def client(modbus_sim):
    c = AsyncModbusTcpClient("127.0.0.1", port=modbus_sim.port, timeout=2, retries=0)
    assert await c.connect()
    yield c
    c.close()


async def read(client, table: str, address0: int, count: int):
    call = {"hr": client.read_holding_registers, "ir": client.read_input_registers,
            "co": client.read_coils, "di": client.read_discrete_inputs}[table]  # fmt: skip
    rr = await call(address0, count=count, device_id=1)
    assert not rr.isError(), rr
    return rr.registers if table in ("hr", "ir") else rr.bits[:count]


# ----------------------------------------------------------------------------------------------- plant file


def test_config_copy_is_identical_to_the_bundled_plant():
    assert (ROOT / "config" / "simulator.yaml").read_bytes() == (ROOT / "simulators" / "plant.yaml").read_bytes()


def test_bundled_plant_maps_the_demo_points():
    cfg = load_plant_config()
    points = {p.name: p for p in cfg.modbus.points}
    pressure = points["pressure"]
    assert (str(pressure.address), pressure.type, pressure.byte_order) == ("hr:0", "float32", "CDAB")
    assert (str(points["strokes"].address), points["strokes"].type) == ("hr:2", "uint32")
    assert (str(points["oil_temp"].address), points["oil_temp"].scale) == ("ir:0", 0.1)
    assert (str(points["running"].address), points["running"].type) == ("co:0", "bool")
    assert (str(points["door_open"].address), points["door_open"].type) == ("hr:9.3", "bit")
    assert (str(points["recipe"].address), points["recipe"].length) == ("hr:19", 8)
    assert {n.id for n in cfg.opcua.nodes} >= {"Oven1.Zone1.Temperature", "Oven1.DoorOpen", "i=1001"}


def test_plant_file_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "plant.yaml"
    bad.write_text(
        "signals:\n"
        "  s: {kind: sine, min: 10, max: 5, period: 1s}\n"
        "modbus:\n"
        "  points:\n"
        "    - {name: a, address: '50001', type: int16}\n"
        "    - {name: b, address: '00001', type: float32}\n"
        "    - {name: c, address: '40001', type: int16, colour: red}\n"
    )
    with pytest.raises(PlantConfigError) as err:
        load_plant_config(bad)
    text = str(err.value)
    assert f"{bad}:2: signals.s: " in text and "below max" in text
    assert f"{bad}:5: modbus.points[0].address" in text and "not a Modbus address" in text
    assert f"{bad}:6: modbus.points[1]" in text and "use type bool" in text
    assert f"{bad}:7: modbus.points[2].colour" in text


def test_overlapping_points_and_unknown_signals_are_rejected(tmp_path):
    bad = tmp_path / "plant.yaml"
    bad.write_text(
        "modbus:\n  points:\n"
        "    - {name: a, address: '40001', type: float32}\n"
        "    - {name: b, address: '40002', type: int16}\n"
        "    - {name: c, address: '40001.2', type: bit, signal: nowhere}\n"
    )
    with pytest.raises(PlantConfigError) as err:
        load_plant_config(bad)
    assert "overlaps a" in str(err.value)
    bad.write_text("modbus:\n  points:\n    - {name: c, address: '40003.2', type: bit, signal: nowhere}\n")
    with pytest.raises(PlantConfigError, match="unknown signal.*c -> nowhere"):
        load_plant_config(bad)


def test_unquoted_bit_10_keeps_its_digits(tmp_path):
    f = tmp_path / "plant.yaml"
    f.write_text("modbus:\n  points:\n    - {name: x, address: 40010.10, type: bit}\n")
    assert str(load_plant_config(f).modbus.points[0].address) == "hr:9.10"


# ------------------------------------------------------------------------------------------------- signals


def _plant(tmp_path, signals: str) -> Plant:
    f = tmp_path / "plant.yaml"
    f.write_text("seed: 1\nsignals:\n" + signals)
    return Plant.load(f)


def test_time_signals(tmp_path):
    p = _plant(
        tmp_path,
        "  s: {kind: sine, min: 100, max: 180, period: 20s}\n"
        "  r: {kind: ramp, min: 0, max: 10, period: 10s}\n"
        "  c: {kind: counter, start: 5, step: 2, interval: 1s, wrap: 3}\n",
    )
    v = p.update(5.0)  # a quarter period
    assert v["s"] == pytest.approx(180) and v["r"] == pytest.approx(5) and v["c"] == 5 + 2 * (5 % 3)
    v = p.update(15.0)
    assert v["s"] == pytest.approx(100) and v["r"] == pytest.approx(5)


def test_random_walk_stays_in_bounds_and_is_reproducible(tmp_path):
    spec = "  w: {kind: random_walk, start: 45, step: 0.5, min: 44, max: 46}\n"
    a, b = _plant(tmp_path, spec), _plant(tmp_path, spec)
    seq_a = [a.update(t * 0.1)["w"] for t in range(500)]
    seq_b = [b.update(t * 0.1)["w"] for t in range(500)]
    assert seq_a == seq_b and abs(seq_a[0] - 45) <= 1.0  # one step per update from start
    assert min(seq_a) >= 44 and max(seq_a) <= 46 and len(set(seq_a)) > 100


def test_machine_cycle_counts_parts_only_while_running(tmp_path):
    p = _plant(
        tmp_path,
        "  m: {kind: machine, initial_state: idle, idle_time: 1s, run_time: 10s, cycle_time: 2s,"
        " fault_time: 3s, fault_probability: 1.0}\n",
    )
    v = p.update(0.5)
    assert (v["m.state"], v["m.running"], v["m.parts"]) == ("idle", False, 0)
    v = p.update(6.0)  # running since t=1: parts at 3 and 5
    assert (v["m.state"], v["m.state_code"], v["m.running"], v["m.parts"]) == ("running", 1, True, 2)
    v = p.update(11.5)  # run ended at 11 with parts at 7, 9, 11; fault certain
    assert (v["m.state"], v["m.fault"], v["m.parts"]) == ("fault", True, 5)
    v = p.update(14.5)  # fault 11..14, then idle
    assert (v["m.state"], v["m.idle"], v["m.parts"]) == ("idle", True, 5)


def test_plant_override_freezes_until_released(tmp_path):
    p = _plant(tmp_path, "  r: {kind: ramp, min: 0, max: 10, period: 10s}\n")
    p.set("r", 99.0)
    assert p.update(3.0)["r"] == 99.0 and p.update(4.0)["r"] == 99.0
    p.release("r")
    assert p.update(4.0)["r"] == pytest.approx(4.0)
    with pytest.raises(KeyError, match="unknown plant output 'nope'"):
        p.set("nope", 1)


# -------------------------------------------------------------------------------------------------- modbus


async def test_demo_points_are_encoded_as_the_integrator_expects(modbus_sim, client):
    modbus_sim.set("pressure", 123.4)
    modbus_sim.set("strokes", 70000)
    modbus_sim.set("oil_temp", 45.1)
    modbus_sim.set("running", True)
    hr = await read(client, "hr", 0, 4)
    assert struct.unpack(">f", words_to_bytes(hr[1::-1]))[0] == struct.unpack(">f", struct.pack(">f", 123.4))[0]
    assert hr[2:4] == [1, 70000 - 65536]
    assert await read(client, "ir", 0, 1) == [451]
    assert await read(client, "co", 0, 1) == [True]
    modbus_sim.set("oil_temp", -3.2)
    assert await read(client, "ir", 0, 1) == [65536 - 32]
    regs = await read(client, "hr", 19, 8)
    assert words_to_bytes(regs) == b"RCP-0042" + b"\x00" * 8


@pytest.mark.parametrize(("name", "table", "address0", "type_", "order", "value"), BENCH, ids=[b[0] for b in BENCH])
async def test_bench_point_encoding(modbus_sim, client, name, table, address0, type_, order, value):
    words = expected_words(type_, value, order)
    assert await read(client, table, address0, len(words)) == words
    modbus_sim.set(name, OTHER[type_])
    assert await read(client, table, address0, len(words)) == expected_words(type_, OTHER[type_], order)


async def test_bench_strings_bits_and_bools(modbus_sim, client):
    assert words_to_bytes(await read(client, "hr", 200, 5)) == b"BENCH-01\x00\x00"
    assert words_to_bytes(await read(client, "hr", 210, 4)) == b"BADCFE\x00G"  # "ABCDEFG" bytes swapped per register
    assert await read(client, "hr", 220, 1) == [(1 << 0) | (1 << 15)]
    assert await read(client, "ir", 110, 1) == [1 << 5]
    assert await read(client, "hr", 234, 1) == [715]  # 21.5 with scale 0.1, offset -50
    assert await read(client, "co", 100, 2) == [True, False]
    assert await read(client, "di", 100, 2) == [True, False]
    assert await read(client, "di", 0, 1) == [True]


async def test_bits_of_one_register_do_not_clobber_each_other(modbus_sim, client):
    modbus_sim.set("fault", False)
    modbus_sim.set("door_open", True)
    assert (await read(client, "hr", 9, 1))[0] & 0b1011 == 0b1001  # auto_mode (bit 0) stays on
    modbus_sim.set("fault", True)
    assert (await read(client, "hr", 9, 1))[0] & 0b1011 == 0b1011
    modbus_sim.set("door_open", False)
    modbus_sim.set("auto_mode", False)
    assert (await read(client, "hr", 9, 1))[0] & 0b1011 == 0b0010
    modbus_sim.set("b_bit7", True)
    modbus_sim.set("b_bit15", False)
    assert await read(client, "hr", 220, 1) == [0b1000_0001]


async def test_override_holds_across_updates_and_release_resumes_the_signal(modbus_sim, client, plant):
    modbus_sim.set("pressure", 150.0)

    async def pressure() -> float:
        return struct.unpack(">f", words_to_bytes((await read(client, "hr", 0, 2))[::-1]))[0]

    for _ in range(3):  # the plant updates every 100 ms; the pinned value must survive them
        await asyncio.sleep(plant.config.update_interval)
        assert await pressure() == 150.0
    modbus_sim.release("pressure")
    assert await wait_until(lambda: modbus_sim.value_of("pressure") != 150.0, timeout=5)
    assert 100 <= await pressure() <= 180


async def test_set_accepts_plant_outputs_and_rejects_bad_values(modbus_sim, client):
    modbus_sim.set("press.running", False)  # a plant output: every point bound to it follows
    assert await read(client, "co", 0, 1) == [False]
    assert modbus_sim.plant.value("press.running") is False
    modbus_sim.set("press.running", True)
    assert await read(client, "co", 0, 1) == [True]
    with pytest.raises(ValueError, match="outside the int16 range"):
        modbus_sim.set("b_int16_abcd", 40000)
    with pytest.raises(ValueError, match="needs a number"):
        modbus_sim.set("pressure", "high")
    with pytest.raises(ValueError, match="at most 16"):
        modbus_sim.set("recipe", "X" * 17)
    with pytest.raises(ValueError, match="needs a number"):
        modbus_sim.set("press.parts", "many")  # strokes (uint32) is bound to it: the plant must not take it
    assert not modbus_sim.plant.overridden("press.parts")
    with pytest.raises(KeyError):
        modbus_sim.set("no_such_point", 1)


async def test_raw_access_and_client_writes_share_one_image(modbus_sim, client):
    modbus_sim.write_registers("hr", 250, [0x1234, 0xABCD])
    assert await read(client, "hr", 250, 2) == [0x1234, 0xABCD]
    modbus_sim.write_bits("di", 150, [True, False, True])
    assert await read(client, "di", 150, 3) == [True, False, True]
    assert not (await client.write_registers(260, [7, 8, 9], device_id=1)).isError()
    assert modbus_sim.read_registers("hr", 260, 3) == [7, 8, 9]
    assert not (await client.write_coils(17, [True, True], device_id=1)).isError()
    assert modbus_sim.read_bits("co", 16, 4) == [False, True, True, False]
    with pytest.raises(ValueError, match="outside the table"):
        modbus_sim.write_registers("hr", 299, [1, 2])
    with pytest.raises(ValueError, match="0..65535"):
        modbus_sim.write_registers("hr", 0, [70000])


async def test_reads_outside_a_table_answer_illegal_address(client):
    rr = await client.read_holding_registers(299, count=2, device_id=1)
    assert rr.isError() and rr.exception_code == 2
    rr = await client.read_input_registers(150, count=60, device_id=1)
    assert rr.isError() and rr.exception_code == 2


async def test_stop_closes_the_port_and_start_reopens_it(modbus_sim, client):
    assert await read(client, "hr", 100, 1) == expected_words("int16", -12345, "ABCD")
    await modbus_sim.stop()
    with pytest.raises(ModbusException):  # connections of the stopped PLC are closed, not left hanging
        await client.read_holding_registers(100, count=1, device_id=1)
    probe = AsyncModbusTcpClient("127.0.0.1", port=modbus_sim.port, timeout=1, retries=0)
    assert not await probe.connect()  # nothing listens any more
    probe.close()
    await modbus_sim.start()
    again = AsyncModbusTcpClient("127.0.0.1", port=modbus_sim.port, timeout=2, retries=0)
    assert await again.connect()
    assert await read(again, "hr", 100, 1) == expected_words("int16", -12345, "ABCD")
    again.close()


async def test_modbus_start_uses_no_deprecated_pymodbus_api(plant, caplog):
    caplog.set_level(logging.WARNING, logger="pymodbus")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        async with ModbusSimulator(plant, port=free_port()):
            pass
    assert not [r for r in caplog.records if "deprecated" in r.getMessage().lower()]


async def test_port_in_use_is_a_clear_error(modbus_sim, plant):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{modbus_sim.port}"):
        await ModbusSimulator(plant, port=modbus_sim.port).start()


# -------------------------------------------------------------------------------------------------- OPC UA


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def opcua_sim():
    sim = OpcUaSimulator(Plant.load(), port=free_port(), clock=False)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_opcua_namespace_types_and_values(opcua_sim):
    async with Client(opcua_sim.endpoint, timeout=5) as c:
        assert await c.get_namespace_index("urn:acme:oven") == 2
        zone1 = c.get_node("ns=2;s=Oven1.Zone1.Temperature")
        assert await zone1.read_data_type_as_variant_type() == ua.VariantType.Double
        assert 176 <= await zone1.read_value() <= 184
        assert await c.get_node("ns=2;s=Oven1.State").read_value() in ("idle", "running", "fault")
        assert await c.get_node("ns=2;i=1001").read_value() == 180.0
        expected = {"Boolean": True, "SByte": -100, "Byte": 200, "Int16": -12345, "UInt16": 54321,
                    "Int32": -123456789, "UInt32": 3000000001, "Int64": -1234567890123, "UInt64": 2**64 - 2048,
                    "Float": -1234.5, "Double": -98765.4321, "String": "BENCH-01"}  # fmt: skip
        for type_name, value in expected.items():
            dv = await c.get_node(f"ns=2;s=Oven1.Bench.{type_name}").read_data_value()
            assert (dv.Value.VariantType, dv.Value.Value) == (ua.VariantType[type_name], value), type_name
            assert dv.StatusCode.is_good() and dv.SourceTimestamp is not None
        oven = c.get_node("ns=2;s=Oven1")
        names = {(await n.read_browse_name()).Name for n in await oven.get_children()}
        assert {"Zone1", "Zone2", "DoorOpen", "State", "PartCount", "Setpoint", "ConveyorSpeed"} <= names
        assert (await c.get_node("ns=2;s=Oven1.Zone1").read_browse_name()).Name == "Zone1"


@pytest.mark.asyncio(loop_scope="module")
async def test_opcua_set_and_release(opcua_sim):
    async with Client(opcua_sim.endpoint, timeout=5) as c:
        door = c.get_node("ns=2;s=Oven1.DoorOpen")
        zone1 = c.get_node("ns=2;s=Oven1.Zone1.Temperature")
        opcua_sim.set("door_open", True)
        opcua_sim.set("zone1_temp", 250.5)
        assert await door.read_value() is True and await zone1.read_value() == 250.5
        opcua_sim.set("door_open", False)
        assert await door.read_value() is False
        opcua_sim.release("zone1_temp")
        await asyncio.sleep(0)
        assert 176 <= await zone1.read_value() <= 184
        with pytest.raises(ValueError, match="UInt32 range"):
            opcua_sim.set("part_count", -1)
        assert opcua_sim.node_id("setpoint") == "ns=2;i=1001"
        setpoint = c.get_node("ns=2;i=1001")  # writable: a client write stays (its value is a constant)
        await setpoint.write_value(ua.DataValue(ua.Variant(190.0, ua.VariantType.Double)))
        await asyncio.sleep(0.25)
        assert await setpoint.read_value() == 190.0
        await setpoint.write_value(ua.DataValue(ua.Variant(180.0, ua.VariantType.Double)))
        with pytest.raises(ua.UaStatusCodeError):  # read-only
            await zone1.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))


async def test_runner_serves_both_until_stopped_and_then_frees_the_ports(capsys):
    mb, uap = free_port(), free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulators(None, "127.0.0.1", mb, uap, stop_event=stop))
    try:
        assert await wait_until(lambda: "OPC UA PLC" in capsys.readouterr().out or task.done(), timeout=10)
        assert not task.done()
        c = AsyncModbusTcpClient("127.0.0.1", port=mb, timeout=2, retries=0)
        assert await c.connect()
        assert await read(c, "hr", 100, 1) == expected_words("int16", -12345, "ABCD")
        c.close()
        async with Client(f"opc.tcp://127.0.0.1:{uap}/", timeout=5) as ua_client:
            assert await ua_client.get_node("ns=2;s=Oven1.Bench.Int16").read_value() == -12345
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    # both ports are free again (a restart on the same ports works)
    for port in (mb, uap):
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


def test_main_simulate_rejects_a_bad_plant_file_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "plant.yaml"
    bad.write_text("signals:\n  x: {kind: wobble}\n")
    assert main_simulate([str(bad), "--modbus-port", "1"]) == 2
    assert f"{bad}:2: signals.x" in capsys.readouterr().err


def test_simulators_import_neither_gateway_nor_drivers():
    code = (
        "import sys, simulators.runner\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gateway', 'drivers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
