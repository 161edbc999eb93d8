"""Decoding register and bit responses into batches, checked against values packed with ``struct``."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from drivers.modbus.config import ModbusTag
from drivers.modbus.decode import NAN_VALUE, apply_scaling, decode_bits, decode_registers
from drivers.modbus.plan import compile_plan
from gateway.batch import Batch, Quality

# Where the bytes of the big-endian value (A = most significant) sit in the registers, byte by byte.
LAYOUTS = {
    2: {"ABCD": "AB", "BADC": "BA"},
    4: {"ABCD": "ABCD", "CDAB": "CDAB", "BADC": "BADC", "DCBA": "DCBA"},
    8: {"ABCD": "ABCDEFGH", "CDAB": "GHEFCDAB", "BADC": "BADCFEHG", "DCBA": "HGFEDCBA"},
}
FORMATS = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
    "int64": ">q", "uint64": ">Q", "float64": ">d",
}  # fmt: skip
SAMPLES = {
    "int16": [-12345, 0, 32767, -32768, 1],
    "uint16": [54321, 0, 65535],
    "int32": [-123456789, 2147483647, -2147483648],
    "uint32": [3_000_000_000, 0, 4294967295],
    "int64": [-(2**40) - 7, 2**53 - 1, -(2**63)],
    "uint64": [2**53 - 1, 2**64 - 1, 12345],
    "float32": [1.5, -273.15, 3.0e38, -0.0],
    "float64": [math.pi, -1e300, 6.02214076e23],
}


def to_registers(value: object, type_: str, order: str) -> list[int]:
    big = struct.pack(FORMATS[type_], value)
    layout = LAYOUTS[len(big)][order]
    placed = bytes(big[ord(letter) - ord("A")] for letter in layout)
    return list(struct.unpack(f">{len(placed) // 2}H", placed))


def poll(tags: list[ModbusTag], memory: dict[str, np.ndarray], **limits: int) -> Batch:
    """Run the plan against in-memory tables, the way the driver does against a device."""
    plan = compile_plan(tags, **limits)
    batch = Batch.empty(len(plan), 0)
    for req in plan.requests:
        data = memory[req.table.value][req.start : req.start + req.count]
        if req.table.is_bits:
            decode_bits(req, data.astype(bool), batch)
        else:
            decode_registers(req, data.astype(np.uint16), batch)
    apply_scaling(plan, batch)
    return batch


def empty_memory() -> dict[str, np.ndarray]:
    return {
        "hr": np.zeros(65536, np.uint16),
        "ir": np.zeros(65536, np.uint16),
        "co": np.zeros(65536, bool),
        "di": np.zeros(65536, bool),
    }


CASES = [(t, o) for t, fmt in FORMATS.items() for o in LAYOUTS[struct.calcsize(fmt)]]


@pytest.mark.parametrize(("type_", "order"), CASES)
def test_every_type_and_byte_order(type_: str, order: str) -> None:
    memory = empty_memory()
    tags, expected, address = [], [], 7  # odd start: values need not be aligned
    for i, value in enumerate(SAMPLES[type_]):
        regs = to_registers(value, type_, order)
        memory["hr"][address : address + len(regs)] = regs
        memory["ir"][address : address + len(regs)] = regs
        tags.append(ModbusTag(name=f"h{i}", address=f"hr:{address}", type=type_, byte_order=order))
        tags.append(ModbusTag(name=f"i{i}", address=f"ir:{address}", type=type_, byte_order=order))
        single = struct.unpack(FORMATS[type_], struct.pack(FORMATS[type_], value))[0]
        expected += [float(single)] * 2
        address += len(regs) + i  # varying gaps
    batch = poll(tags, memory)
    np.testing.assert_array_equal(batch.values, np.array(expected))
    assert (batch.quality == Quality.GOOD).all()


def test_64_bit_integers_beyond_2_53_are_rounded_to_float64() -> None:
    memory = empty_memory()
    memory["hr"][0:4] = to_registers(2**60 + 1, "uint64", "ABCD")
    batch = poll([ModbusTag(name="big", address="hr:0", type="uint64")], memory)
    assert batch.values[0] == float(2**60)


def test_nan_from_the_device_is_uncertain_with_a_code() -> None:
    memory = empty_memory()
    memory["hr"][0:2] = to_registers(float("nan"), "float32", "CDAB")
    memory["hr"][2:4] = to_registers(2.5, "float32", "CDAB")
    memory["hr"][4:8] = to_registers(float("inf"), "float64", "ABCD")
    tags = [
        ModbusTag(name="nan", address="hr:0", type="float32", byte_order="CDAB"),
        ModbusTag(name="ok", address="hr:2", type="float32", byte_order="CDAB"),
        ModbusTag(name="inf", address="hr:4", type="float64"),
    ]
    batch = poll(tags, memory)
    assert math.isnan(batch.values[0])
    assert batch.quality.tolist() == [Quality.UNCERTAIN, Quality.GOOD, Quality.GOOD]
    assert batch.errors.tolist() == [NAN_VALUE, 0, 0]
    assert "NaN" in batch.error_text[NAN_VALUE]
    assert batch.values[1] == 2.5 and batch.values[2] == math.inf


def test_bits_of_registers_bit_0_is_least_significant() -> None:
    memory = empty_memory()
    memory["hr"][9] = 0b1000_0000_0000_1001
    memory["ir"][0] = 0xFFFE
    tags = [ModbusTag(name=f"b{b}", address=f"40010.{b}", type="bit") for b in range(16)]
    tags.append(ModbusTag(name="ir0", address="30001.0", type="bit"))
    tags.append(ModbusTag(name="ir15", address="ir:0.15", type="bit"))
    batch = poll(tags, memory)
    assert batch.values[:16].tolist() == [1, 0, 0, 1] + [0] * 11 + [1]
    assert batch.values[16:].tolist() == [0, 1]


def test_coils_and_discrete_inputs() -> None:
    memory = empty_memory()
    memory["co"][[0, 5, 1999, 2004]] = True
    memory["di"][3] = True
    tags = [
        ModbusTag(name="c0", address="00001", type="bool"),
        ModbusTag(name="c1", address="00002", type="bool"),
        ModbusTag(name="c5", address="co:5", type="bool"),
        ModbusTag(name="c1999", address="co:1999", type="bool"),
        ModbusTag(name="c2004", address="co:2004", type="bool"),
        ModbusTag(name="d3", address="10004", type="bool"),
        ModbusTag(name="d4", address="di:4", type="bool"),
    ]
    batch = poll(tags, memory)
    assert batch.values.tolist() == [1, 0, 1, 1, 1, 1, 0]


def test_strings() -> None:
    memory = empty_memory()
    memory["hr"][19:27] = struct.unpack(">8H", b"RCP-42A\x00" + b"\x00" * 8)
    memory["hr"][30:33] = struct.unpack(">3H", b"AB    ")
    memory["hr"][40:42] = struct.unpack("<2H", b"XYZ\x00")  # low byte first in each register
    memory["hr"][50:52] = struct.unpack(">2H", b"OK\x00\xff")  # junk after the terminator is ignored
    memory["ir"][0:2] = struct.unpack(">2H", b"\xe9t\xe9!")
    tags = [
        ModbusTag(name="recipe", address="40020", type="string", length=8),
        ModbusTag(name="padded", address="hr:30", type="string", length=3),
        ModbusTag(name="swapped", address="hr:40", type="string", length=2, byte_order="BADC"),
        ModbusTag(name="cut", address="hr:50", type="string", length=2),
        ModbusTag(name="latin", address="ir:0", type="string", length=2),
        ModbusTag(name="num", address="hr:60", type="uint16"),
    ]
    batch = poll(tags, memory)
    assert batch.strings == {0: "RCP-42A", 1: "AB", 2: "XYZ", 3: "OK", 4: "\ufffdt\ufffd!"}
    assert np.isnan(batch.values[:5]).all()
    assert (batch.quality == Quality.GOOD).all()


def test_scale_and_offset_apply_to_every_type() -> None:
    memory = empty_memory()
    memory["ir"][0] = to_registers(215, "int16", "ABCD")[0]
    memory["ir"][1] = to_registers(-40, "int16", "ABCD")[0]
    memory["hr"][0:2] = to_registers(1000, "uint32", "DCBA")
    memory["co"][0] = True
    tags = [
        ModbusTag(name="temp", address="30001", type="int16", scale=0.1),
        ModbusTag(name="neg", address="30002", type="int16", scale=0.5, offset=-1),
        ModbusTag(name="flow", address="40001", type="uint32", byte_order="DCBA", scale=0.001, offset=2),
        ModbusTag(name="run", address="00001", type="bool", scale=-1),
    ]
    batch = poll(tags, memory)
    np.testing.assert_allclose(batch.values, [21.5, -21.0, 3.0, -1.0])


def test_decoding_across_split_requests_lands_at_plan_positions() -> None:
    memory = empty_memory()
    expected = np.arange(300, dtype=np.float64) * 3
    memory["hr"][:300] = expected.astype(np.uint16)
    order = np.random.default_rng(7).permutation(300)  # config order unrelated to addresses
    tags = [ModbusTag(name=f"r{i}", address=f"hr:{i}", type="uint16") for i in order]
    batch = poll(tags, memory, max_registers_per_read=50)
    np.testing.assert_array_equal(batch.values, expected[order])
