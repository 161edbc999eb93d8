"""Property tests of the Modbus decoders against random and malformed responses: nothing escapes, and no
value that is not the device's is reported as good."""

from __future__ import annotations

import math
import struct
from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.base import ModbusDriverBase
from drivers.modbus.config import ModbusTag
from drivers.modbus.plan import compile_plan
from gateway.batch import Batch, Quality

FORMATS = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "int64": ">q",
    "uint64": ">Q",
    "float64": ">d",
}
LAYOUTS = {
    2: {"ABCD": "AB", "BADC": "BA"},
    4: {"ABCD": "ABCD", "CDAB": "CDAB", "BADC": "BADC", "DCBA": "DCBA"},
    8: {"ABCD": "ABCDEFGH", "CDAB": "GHEFCDAB", "BADC": "BADCFEHG", "DCBA": "HGFEDCBA"},
}


def reference(words: list[int], type_: str, order: str) -> float:
    """Independent decoding with ``struct``: undo the byte layout, then unpack big endian."""
    placed = struct.pack(f">{len(words)}H", *words)
    layout = LAYOUTS[len(placed)][order]
    big = bytearray(len(placed))
    for k, letter in enumerate(layout):
        big[ord(letter) - ord("A")] = placed[k]
    return float(struct.unpack(FORMATS[type_], bytes(big))[0])


tag_st = st.sampled_from(list(FORMATS)).flatmap(
    lambda t: st.tuples(st.just(t), st.sampled_from(list(LAYOUTS[struct.calcsize(FORMATS[t])])))
)


def respond(registers):
    return SimpleNamespace(isError=lambda: False, registers=registers)


@settings(max_examples=150, deadline=None)
@given(st.lists(tag_st, min_size=1, max_size=8), st.data())
def test_random_registers_decode_to_the_reference_or_are_not_good(specs, data):
    """Random register contents, random types and byte orders, sometimes a response one register short:
    a good value is exactly what ``struct`` decodes; NaN is uncertain; a short response is bad."""
    tags, addresses, address = [], [], 0
    for i, (t, order) in enumerate(specs):
        tags.append(ModbusTag(name=f"t{i}", address=f"hr:{address}", type=t, byte_order=order))
        addresses.append(address)
        address += struct.calcsize(FORMATS[t]) // 2 + data.draw(st.integers(0, 3))
    plan = compile_plan(tags)  # positions are the tags' config order
    memory = data.draw(st.lists(st.integers(0, 65535), min_size=address, max_size=address))
    batch = Batch.empty(len(plan), 0)
    answers = []
    for req in plan.requests:
        short = data.draw(st.integers(0, 9)) == 0
        answers.append(respond(memory[req.start : req.start + req.count - int(short)]))
    ModbusDriverBase.decode_answers(plan, answers, batch)  # the whole poll at once, scaling included
    for i, (t, order) in enumerate(specs):
        n = struct.calcsize(FORMATS[t]) // 2
        want = reference(memory[addresses[i] : addresses[i] + n], t, order)
        q, got = batch.quality[i], batch.values[i]
        if q == Quality.GOOD:
            assert got == want or (abs(want) > 2**53 and math.isclose(got, want, rel_tol=1e-15))
        elif q == Quality.UNCERTAIN:
            assert math.isnan(got) and math.isnan(want)


@given(st.lists(st.integers(-(2**20), 2**20), max_size=200), st.booleans())
def test_malformed_responses_never_raise(values, bits):
    tags = [
        ModbusTag(name="a", address="hr:0", type="float64"),
        ModbusTag(name="b", address="hr:10", type="string", length=4),
    ]
    plan = compile_plan(tags)
    batch = Batch.empty(len(plan), 0)
    regs = np.asarray(values, dtype=np.int64).astype(np.uint16).tolist()
    ModbusDriverBase.decode_answers(plan, [respond(regs) for _ in plan.requests], batch)
    needed = max(r.start + r.count for r in plan.requests)
    assert len(plan.requests) == 1  # both tags in one read of 14 registers
    if len(values) < needed:
        assert (batch.quality == Quality.BAD).all()  # a short answer is never decoded into values
    else:
        assert batch.quality[0] != Quality.BAD and isinstance(batch.strings[1], str)
