"""Property: whatever bytes a device answers with, no value published as good differs from what it serves.

A raw server plays a device with a fixed map and answers every request with bytes drawn by hypothesis: the
correct answer, the correct answer with some of its fields changed (transaction id, unit, function code,
byte count, length, extra or missing data, a marker prepended), a stale copy of an earlier answer first, or
plain random bytes. The data of a changed answer always comes from the map, so a good value that differs
from the map can only come from an answer taken for the wrong request. Modbus TCP and RTU over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.modbus.config import ModbusTag, ModbusTcpSource
from drivers.modbus.rtu import ModbusRtuTcpDriver
from drivers.modbus.rtu_config import ModbusRtuTcpSource
from drivers.modbus.rtu_frame import crc16
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext

UNIT = 5
HR = np.array([0x1000 + 7 * i for i in range(32)], dtype=np.uint16)
IR = np.array([0x2000 + i for i in range(32)], dtype=np.uint16)
CO = np.array([i % 3 == 0 for i in range(32)])
DI = np.array([i % 2 == 1 for i in range(32)])
TAGS = [
    ModbusTag(name="h0", address="hr:0", type="uint16"),
    ModbusTag(name="h1", address="hr:1", type="int16"),
    ModbusTag(name="h2", address="hr:2", type="uint32"),
    ModbusTag(name="i0", address="ir:3", type="uint16"),
    ModbusTag(name="c0", address="co:0", type="bool"),
    ModbusTag(name="c1", address="co:4", type="bool"),
    ModbusTag(name="d0", address="di:1", type="bool"),
    ModbusTag(name="d1", address="di:2", type="bool"),
]
EXPECTED = [float(HR[0]), float(HR[1].astype(np.int16)), float((int(HR[2]) << 16) | int(HR[3])), float(IR[3]),
            1.0, 0.0, 1.0, 0.0]


def served(function: int, start: int, count: int) -> bytes:
    """The data bytes of the correct answer (without byte count)."""
    if function in (1, 2):
        bits = (CO if function == 1 else DI)[start : start + count]
        return np.packbits(bits, bitorder="little").tobytes()
    return (HR if function == 3 else IR)[start : start + count].astype(">u2").tobytes()


#: one answer's recipe: which fields to change (None: keep) and how
recipe_st = st.fixed_dictionaries({
    "kind": st.sampled_from(["correct", "changed", "changed", "changed", "random"]),
    "tid": st.one_of(st.none(), st.just(0), st.integers(0, 0xFFFF), st.just(-1)),
    "unit": st.one_of(st.none(), st.integers(0, 255)),
    "function": st.one_of(st.none(), st.sampled_from([1, 2, 3, 4, 0x83, 0x84, 0x81]), st.integers(0, 255)),
    "byte_count": st.one_of(st.none(), st.integers(0, 255)),
    "extra": st.one_of(st.none(), st.binary(min_size=1, max_size=4)),
    "cut": st.one_of(st.none(), st.integers(1, 4)),
    "length_delta": st.one_of(st.none(), st.integers(-3, 3)),
    "stale_first": st.booleans(),
    "bad_crc": st.booleans(),
    "random": st.binary(min_size=0, max_size=24),
})


class Device:
    """A raw Modbus TCP (``rtu=False``) or RTU-over-TCP server answering by the recipes, in turn."""

    def __init__(self, recipes: list[dict], *, rtu: bool) -> None:
        self.recipes, self.rtu = recipes, rtu
        self.turn = 0
        self.previous = b""

    def answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        r = self.recipes[self.turn % len(self.recipes)]
        self.turn += 1
        function = pdu[0]
        start, count = struct.unpack(">HH", pdu[1:5])
        data = correct = served(function, start, count)
        if r["kind"] == "random":
            out = r["random"]
        else:
            fc, bc = function, len(data)
            if r["kind"] == "changed":
                fc = r["function"] if r["function"] is not None else fc
                if r["extra"] is not None:
                    data = r["extra"] + data  # a marker before the data: more than asked for
                if r["cut"] is not None:
                    data = data[: -r["cut"]]
                if len(data) == len(correct):  # a marker and a cut of the same size: a well-formed answer
                    data = correct  # with other values, which no check can tell from the device's own
                bc = len(data) if r["byte_count"] is None else r["byte_count"]
                unit = unit if r["unit"] is None else r["unit"]
                if r["tid"] is not None:
                    tid = (tid - 1) & 0xFFFF if r["tid"] == -1 else r["tid"]
            body = bytes((fc, bc & 0xFF)) + data
            if self.rtu:
                frame = bytes((unit,)) + body
                crc = crc16(frame) ^ (0x1234 if r["kind"] == "changed" and r["bad_crc"] else 0)
                out = frame + crc.to_bytes(2, "little")
            else:
                length = len(body) + 1 + (r["length_delta"] or 0 if r["kind"] == "changed" else 0)
                out = struct.pack(">HHHB", tid, 0, max(0, length), unit) + body
        if r["stale_first"]:
            out = self.previous + out
        self.previous = out
        return out

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                if self.rtu:
                    frame = await reader.readexactly(8)
                    tid, unit, pdu = 0, frame[0], frame[1:6]
                else:
                    tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                    pdu = await reader.readexactly(length - 1)
                writer.write(self.answer(tid, unit, pdu))
                await writer.drain()
        writer.close()


async def poll_through(recipes: list[dict], *, rtu: bool, polls: int = 2) -> list[tuple[int, float]]:
    """Poll the device ``polls`` times; every (tag position, value) published with quality good."""
    device = Device(recipes, rtu=rtu)
    server = await asyncio.start_server(device.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    if rtu:
        source = ModbusRtuTcpSource(driver="modbus_rtu_tcp", host="127.0.0.1", port=port, unit=UNIT,
                                    response_timeout=0.05, timeout=0.5, silent_after_timeout=0, retries=1,
                                    demote_after=100)
        driver = ModbusRtuTcpDriver(source, TAGS, DriverContext.detached("test", len(TAGS)))
    else:
        driver = ModbusTcpDriver(ModbusTcpSource(driver="modbus_tcp", host="127.0.0.1", port=port, unit=UNIT,
                                                 timeout=0.05), TAGS, DriverContext.detached("test", len(TAGS)))
    good: list[tuple[int, float]] = []
    try:
        for _ in range(polls):
            try:
                if not driver._client or not driver._client.connected:
                    await driver.connect()
                batch = await driver.read()
            except DeviceUnavailable:
                continue
            for i in np.flatnonzero(batch.quality == Quality.GOOD).tolist():
                good.append((i, float(batch.values[i])))
    finally:
        await driver.close()
        server.close()
        await server.wait_closed()
        del driver
        gc.collect()  # the RTU-over-TCP arbiter of this port goes with its driver
    return good


def run(coro):  # hypothesis drives a plain function; each example gets a fresh event loop
    return asyncio.run(coro)


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(recipe_st, min_size=1, max_size=6))
def test_no_good_value_differs_from_the_served_map_over_modbus_tcp(recipes: list[dict]) -> None:
    for i, value in run(poll_through(recipes, rtu=False)):
        assert value == EXPECTED[i], (TAGS[i].name, value, EXPECTED[i])


@SETTINGS
@given(st.lists(recipe_st, min_size=1, max_size=6))
def test_no_good_value_differs_from_the_served_map_over_rtu_tcp(recipes: list[dict]) -> None:
    for i, value in run(poll_through(recipes, rtu=True)):
        assert value == EXPECTED[i], (TAGS[i].name, value, EXPECTED[i])


def test_the_correct_answer_is_good_on_both_transports() -> None:
    """The property is not met by rejecting everything: correct answers give every tag, right."""
    correct = [{"kind": "correct", "stale_first": False}]
    for rtu in (False, True):
        good = run(poll_through(correct, rtu=rtu, polls=1))
        assert sorted(good) == list(enumerate(EXPECTED))
