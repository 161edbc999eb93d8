"""The vectorised hot path gives the same results as the straightforward per-value code it replaces:
whole-poll Modbus decoding, float32 publishing, and ring writes after partial batches."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.base import BadResponse, ModbusDriverBase
from drivers.modbus.config import ModbusTag
from drivers.modbus.decode import apply_scaling, decode_registers
from drivers.modbus.plan import compile_plan
from gateway.encoders.json import tags_object
from gateway.batch import Batch, Quality
from gateway.config.common import TagBase
from gateway.reduce import Reducer, float32_numbers
from gateway.ringbuffer import RingBuffer

TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64", "bit", "string"]
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


class Answer:
    def __init__(self, registers):
        self.registers = registers

    def isError(self) -> bool:  # pymodbus's name
        return False


class Exception2(Answer):
    exception_code = 2

    def isError(self) -> bool:
        return True


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from(ORDERS)), min_size=1, max_size=40), st.data())
def test_a_poll_decoded_at_once_equals_each_request_decoded_alone(specs, data):
    """Many requests (small max_registers_per_read), every type and byte order, some requests failing:
    decoding the whole poll in one go gives what decoding each answer alone gives."""
    tags, address = [], 0
    for i, (t, order) in enumerate(specs):
        if t in ("int16", "uint16", "string"):
            order = {"CDAB": "ABCD", "DCBA": "BADC"}.get(order, order)  # one register: no word order
        elif t == "bit":
            order = "ABCD"
        extra = {"length": 3} if t == "string" else {}
        ref = f"hr:{address}.{i % 16}" if t == "bit" else f"hr:{address}"
        tags.append(
            ModbusTag(name=f"t{i}", address=ref, type=t, byte_order=order, scale=2.0 if i % 3 else 1.0, **extra)
        )
        address += {"int16": 1, "uint16": 1, "bit": 1, "string": 3, "float64": 4}.get(t, 2)
    plan = compile_plan(tags, max_registers_per_read=8, max_gap=0)
    memory = data.draw(st.lists(st.integers(0, 65535), min_size=address, max_size=address))
    fails = [data.draw(st.integers(0, 4)) for _ in plan.requests]
    answers = []
    one_by_one = Batch.empty(len(plan), 0)
    for req, f in zip(plan.requests, fails):
        regs = memory[req.start : req.start + req.count]
        if f == 0:
            answers.append(Exception2([]))
            one_by_one.mark_bad(req.positions, 2, "Modbus exception 2 (illegal data address)")
        elif f == 1:
            answers.append(BadResponse(1002, "crc"))
            one_by_one.mark_bad(req.positions, 1002, "crc")
        else:
            answers.append(Answer(regs))
            decode_registers(req, np.asarray(regs, dtype=np.uint16), one_by_one)
    apply_scaling(plan, one_by_one)
    at_once = Batch.empty(len(plan), 0)
    ModbusDriverBase.decode_answers(plan, answers, at_once)
    np.testing.assert_array_equal(at_once.values, one_by_one.values)
    np.testing.assert_array_equal(at_once.quality, one_by_one.quality)
    np.testing.assert_array_equal(at_once.errors, one_by_one.errors)
    assert at_once.strings == one_by_one.strings


def test_float32_values_are_published_as_their_shortest_decimal():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    raw = raw[np.isfinite(raw)]
    x = np.concatenate([raw.astype(np.float64), rng.normal(100, 30, 50_000), [0.0, -0.0, 0.1, 123.4, 1e-40]])
    x = x[np.isfinite(x)]
    want = np.array([float(str(np.float32(v))) for v in x.tolist()])
    np.testing.assert_array_equal(float32_numbers(x), want)
    grid = x[:600].reshape(20, 30)  # raw series come as (tags, samples)
    np.testing.assert_array_equal(float32_numbers(grid), want[:600].reshape(20, 30))
    assert np.isnan(float32_numbers(np.array([np.nan]))).all()
    assert float32_numbers(np.array([np.inf, -np.inf])).tolist() == [np.inf, -np.inf]


def test_raw_float32_series_and_aggregates_after_partial_writes():
    """A subscription writes only some tags: the ring leaves the one-column fast path and stays right."""
    tags = [TagBase(name="a", mode="raw"), TagBase(name="b", aggregate=["min", "max", "mean"])]
    ring = RingBuffer(2, 8)
    red = Reducer(tags, ring, heartbeat=60.0, float32=np.array([True, True]))
    for k, v in enumerate([0.1, 0.2, 0.3]):
        b = Batch.empty(2, k * 1_000_000)
        b.values[:] = [v, 10 * v]
        ring.write(b)
    b = Batch.empty(1, 5_000_000)
    b.values[:] = [0.7]
    b.index = np.array([0])
    ring.write(b)  # tag a only
    out = tags_object(red.reduce(0.0))
    assert out["a"]["raw"]["v"] == [0.1, 0.2, 0.3, 0.7]
    assert out["b"]["min"] == 1.0 and out["b"]["max"] == 3.0 and out["b"]["mean"] == 2.0 and out["b"]["n"] == 3
    b = Batch.empty(2, 6_000_000)
    b.values[:] = [0.8, 5.5]
    b.quality[1] = Quality.BAD
    ring.write(b)
    out = tags_object(red.reduce(1.0))
    assert out["a"]["raw"]["v"] == [0.8] and out["b"]["n"] == 0 and out["b"]["min"] is None
    assert struct.pack("<f", 0.8) == struct.pack("<f", out["a"]["v"])
