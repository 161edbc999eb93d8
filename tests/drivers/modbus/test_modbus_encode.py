"""Encoding values for Modbus writes: the exact inverse of the read path, and clear refusals."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.address import Table
from drivers.modbus.config import ModbusTag
from drivers.modbus.decode import apply_scaling, decode_registers
from drivers.modbus.encode import INT_RANGES, encode_write, readback_value, set_bit
from drivers.modbus.plan import compile_plan
from gateway.batch import Batch
from gateway.scaling import TagNotWritable

ORDERS = {
    "int16": ["ABCD", "BADC"], "uint16": ["ABCD", "BADC"],
    **{t: ["ABCD", "CDAB", "BADC", "DCBA"] for t in ("int32", "uint32", "float32", "int64", "uint64", "float64")},
}  # fmt: skip


def tag(type_: str, order: str = "ABCD", address: str = "hr:10", **kw) -> ModbusTag:
    return ModbusTag(name="t", address=address, type=type_, byte_order=order, **kw)


def decoded(t: ModbusTag, words: tuple[int, ...]) -> float | str:
    """What a poll of these registers would publish (the real read path)."""
    plan = compile_plan([t])
    batch = Batch.empty(1, 0)
    registers = np.zeros(plan.requests[0].count, dtype=np.uint16)
    registers[: len(words)] = words
    decode_registers(plan.requests[0], registers, batch)
    apply_scaling(plan, batch)
    return batch.strings[0] if t.type == "string" else float(batch.values[0])


def test_float32_cdab_matches_struct_layout():
    # 12.5 = 0x41480000 big endian: words 0x4148 0x0000, CDAB puts the low word first
    op = encode_write(tag("float32", "CDAB"), 12.5)
    assert op.table is Table.HOLDING_REGISTER and op.address == 10
    assert op.words == (0x0000, 0x4148)
    assert encode_write(tag("float32", "BADC"), 12.5).words == (0x4841, 0x0000)
    assert encode_write(tag("float32", "DCBA"), 12.5).words == (0x0000, 0x4841)


def test_int64_and_uint64_are_exact_beyond_2_to_53():
    big = 2**64 - 2048 + 1  # odd: not representable as a float64
    op = encode_write(tag("uint64", "CDAB"), big)
    raw = struct.pack(">Q", big)
    abcd = struct.unpack(">4H", raw)
    assert op.words == tuple(reversed(abcd))
    assert readback_value(tag("uint64", "CDAB"), op.words) == big
    assert encode_write(tag("int64"), str(-(2**62) - 1)).words == struct.unpack(">4H", struct.pack(">q", -(2**62) - 1))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_type_and_order_round_trips_through_the_read_path(data):
    type_ = data.draw(st.sampled_from(sorted(ORDERS)))
    order = data.draw(st.sampled_from(ORDERS[type_]))
    t = tag(type_, order)
    if type_.startswith("float"):
        width = 32 if type_ == "float32" else 64
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    else:
        low, high = INT_RANGES[type_]
        value = data.draw(st.integers(low, high))
    op = encode_write(t, value)
    back = decoded(t, op.words)
    assert back == float(value) or (math.isclose(back, float(value)) and type_ == "float32")
    if type_ == "float32":  # reported as its shortest float32 text, like published values
        assert np.float32(readback_value(t, op.words)) == np.float32(value)
    else:
        assert readback_value(t, op.words) == value


def test_scaled_int16_inverse_scaling():
    t = tag("int16", scale=0.1, offset=-50)
    op = encode_write(t, 21.5)  # raw (21.5 + 50) / 0.1 = 715, with float noise 714.99999999999989
    assert op.words == (715,)
    assert readback_value(t, op.words) == 21.5
    assert decoded(t, op.words) == pytest.approx(21.5)


@pytest.mark.parametrize(
    ("t", "value", "message"),
    [
        (tag("int16"), 1.5, "not a whole number"),
        (tag("int16", scale=0.1), 21.53, "raw value 215.3"),
        (tag("uint16", scale=0.01), 700.0, "outside the uint16 range 0..65535 (raw value 70000"),
        (tag("uint16"), 70000, "outside the uint16 range"),
        (tag("int16"), -32769, "outside the int16 range"),
        (tag("float32"), "12.5", "write a number"),
        (tag("float32"), 1e39, "outside the float32 range"),
        (tag("float64"), math.nan, "not a finite number"),
        (tag("int32"), True, "write a number"),
        (tag("uint32"), "12", "write a number"),  # decimal strings only for 64-bit types
        (tag("uint64"), "12x", "not a whole decimal number"),
        (tag("string", length=2), "too long", "do not fit 2 registers"),
        (tag("string", length=4), "grüße", "only ASCII"),
        (tag("string", length=4), "a\x00b", "NUL"),
        (tag("string", length=4), 12, "write text"),
        (tag("bool", address="co:3"), 2, "write true or false"),
        (tag("bit", address="hr:4.2"), "on", "write true or false"),
    ],
)
def test_values_that_cannot_be_encoded_are_refused(t, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        encode_write(t, value)


@pytest.mark.parametrize("address,type_", [("ir:3", "int16"), ("di:3", "bool"), ("ir:4.1", "bit")])
def test_input_tables_are_read_only(address, type_):
    with pytest.raises(TagNotWritable, match="read-only"):
        encode_write(tag(type_, address=address), 1)


def test_strings_bits_and_coils():
    s = tag("string", length=3)
    op = encode_write(s, "AB-1")
    assert op.words == (0x4142, 0x2D31, 0x0000)
    assert decoded(s, op.words) == "AB-1" == readback_value(s, op.words)
    sb = tag("string", "BADC", length=2)
    assert encode_write(sb, "ABC").words == (0x4241, 0x0043)
    assert readback_value(sb, (0x4241, 0x0043)) == "ABC"

    coil = encode_write(tag("bool", address="00005"), True)
    assert (coil.table, coil.address, coil.bit, coil.bit_index) == (Table.COIL, 4, True, None)
    assert encode_write(tag("bool", address="co:1"), 0).bit is False
    bit = encode_write(tag("bit", address="40010.3"), True)
    assert (bit.table, bit.address, bit.bit, bit.bit_index) == (Table.HOLDING_REGISTER, 9, True, 3)
    assert set_bit(0b1000_0001, 3, True) == 0b1000_1001
    assert set_bit(0xFFFF, 15, False) == 0x7FFF
