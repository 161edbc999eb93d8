"""``iiot-gateway probe``: find the type, byte order and address base of an unknown value on a real device.

What a user relies on: probing the register a manual names, with the value the panel shows, marks the
interpretation that reads it — every type x byte order of the simulator's test bench, the classic
off-by-one of the address, a value behind a decimal scale — over Modbus TCP and over a Modbus RTU pty, and
prints the tag line to copy. Exit 0 when something matched, 1 when nothing did or the device is silent,
2 for an address that cannot be probed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys

import pytest

from drivers.modbus.config import ModbusTcpSource
from drivers.modbus.probe import Reading, probe, windows_for
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.driver import DriverContext
from simulators.codec import encode_number
from simulators.modbus_rtu_sim import ModbusRtuSimulator, RtuSlave

#: the bundled plant's test bench (config/simulator.yaml): first address of each byte order, and the value
BENCH = {
    "int32": ((40111, 40113, 40115, 40117), -123456789),
    "uint32": ((40121, 40123, 40125, 40127), 3000000001),
    "float32": ((40131, 40133, 40135, 40137), -1234.5),
    "int64": ((40141, 40145, 40149, 40153), -1234567890123),
    "uint64": ((40161, 40165, 40169, 40173), 18446744073709549568),
    "float64": ((40181, 40185, 40189, 40193), -98765.4321),
}
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def tcp(port: int):
    source = ModbusTcpSource(driver="modbus_tcp", host="127.0.0.1", port=port, unit=1, timeout=2)
    return lambda tags: ModbusTcpDriver(source, tags, DriverContext.detached("test", len(tags)))


def found(matches: list[Reading]) -> set[tuple[str, str, int, str]]:
    return {(r.type, r.byte_order, r.base, r.address) for r in matches}


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "probe", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_every_type_and_byte_order_of_the_bench_is_found(modbus_sim) -> None:
    make = tcp(modbus_sim.port)
    for type_, (addresses, value) in BENCH.items():
        for order, address in zip(ORDERS, addresses):
            result = await probe(make, windows_for(str(address)), float(value))
            assert (type_, order, 1, str(address)) in found(result.matches), (type_, order, result.matches)


async def test_the_off_by_one_address_is_found_as_base_0(modbus_sim) -> None:
    # the manual says 40130 but counts from 0: the float32 ABCD at 40131 is one register on
    result = await probe(tcp(modbus_sim.port), windows_for("40130"), -1234.5)
    assert found(result.matches) == {("float32", "ABCD", 0, "40131")}


async def test_a_scaled_integer_is_found_with_its_scale(modbus_sim) -> None:
    result = await probe(tcp(modbus_sim.port), windows_for("40235", count=1), 71.5)  # raw 715
    assert [(r.type, r.byte_order, r.base, r.scale) for r in result.matches] == [("int16", "ABCD", 1, 0.1),
                                                                                 ("uint16", "ABCD", 1, 0.1)]


async def test_cli_marks_the_match_and_prints_the_tag_line(modbus_sim) -> None:
    target = f"127.0.0.1:{modbus_sim.port}"
    rc, out, err = await run_cli("modbus", target, "--unit", "1", "--address", "40133", "--expect", "-1234.5")
    assert rc == 0, err
    marked = [line.split() for line in out.splitlines() if "<== matches" in line]
    assert [m[:3] for m in marked] == [["float32", "CDAB", "-1234.5"]], out
    assert '{address: "40133", type: float32, byte_order: CDAB}' in out
    assert "base 0 (one register off): holding register 133..136" in out

    rc, out, _ = await run_cli("modbus", target, "--address", "40133", "--expect", "777")
    assert rc == 1 and "no reading matches 777" in out


async def test_cli_exit_codes_for_a_silent_device_and_a_coil(modbus_sim) -> None:
    rc, out, _ = await run_cli("modbus", "127.0.0.1:1", "--address", "40001", "--timeout", "1")
    assert rc == 1 and "read failed: cannot connect" in out
    rc, _, err = await run_cli("modbus", f"127.0.0.1:{modbus_sim.port}", "--address", "00001")
    assert rc == 2 and "the probe reads registers" in err


@pytest.fixture
async def rtu_line():
    """Unit 2 on a pty line: float32 21.5 in DCBA at hr:10 (40011), uint32 70000 in CDAB at hr:20 (40021)."""
    slave = RtuSlave.blank()
    slave.set_registers("hr", 10, encode_number("float32", 21.5, "DCBA"))
    slave.set_registers("hr", 20, encode_number("uint32", 70000, "CDAB"))
    sim = ModbusRtuSimulator({2: slave})
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
        gc.collect()  # no arbiter of this pty survives into the next test


async def test_rtu_probe_over_a_pty(rtu_line) -> None:
    rc, out, err = await run_cli("modbus-rtu", rtu_line.path, "--baudrate", "19200", "--parity", "N",
                                 "--unit", "2", "--address", "40011", "--expect", "21.5")
    assert rc == 0, err + out
    assert '{address: "40011", type: float32, byte_order: DCBA}' in out
    rc, out, err = await run_cli("modbus-rtu", rtu_line.path, "--parity", "N", "--unit", "2",
                                 "--address", "hr:20", "--count", "2", "--expect", "70000", "--json")
    assert rc == 0, err + out
    matches = [r for r in json.loads(out)["readings"] if r["match"]]
    assert [(r["type"], r["byte_order"], r["address"]) for r in matches] == [
        ("int32", "CDAB", "40021"), ("uint32", "CDAB", "40021")]


async def test_a_base_past_the_end_of_the_table_fails_alone(modbus_sim) -> None:
    # the simulator has 300 holding registers (0..299): 40297 as written reads 296..299, one off 297..300
    result = await probe(tcp(modbus_sim.port), windows_for("40297"), None)
    assert set(result.words) == {1} and len(result.words[1]) == 4
    assert "illegal data address" in result.errors[0]
    assert {r.base for r in result.readings} == {1}
