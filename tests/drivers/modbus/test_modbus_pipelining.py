"""Several Modbus TCP requests in flight on one connection (``max_in_flight``): every answer is still checked.

The bundled simulator serves requests sent back to back; a raw server answers them out of order, with a
stale answer and a wrong unit in between, to show each answer is matched to its request by transaction id.
"""

from __future__ import annotations

import asyncio
import struct
import textwrap
from pathlib import Path

import pytest
from helpers import free_port

from drivers.modbus.check import MISMATCHED_ANSWER
from drivers.modbus.config import ModbusTag, ModbusTcpSource
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext
from simulators.modbus_sim import ModbusSimulator
from simulators.plant import Plant

PLANT = """\
seed: 3
update_interval: 1s
modbus:
  unit: 1
  tables: {hr: 400, ir: 20, co: 16, di: 16}
  points:
"""


def plant(tmp_path: Path) -> Plant:
    points = [f'    - {{name: h{i}, address: "hr:{40 * i}", type: uint16, value: {1000 + i}}}' for i in range(10)]
    points += ['    - {name: ir_a, address: "ir:3", type: uint16, value: 4321}',
               '    - {name: co_a, address: "co:0", type: bool, value: true}',
               '    - {name: di_a, address: "di:1", type: bool, value: true}']
    path = tmp_path / "plant.yaml"
    path.write_text(textwrap.dedent(PLANT) + "\n".join(points) + "\n")
    return Plant.load(path)


TAGS = [ModbusTag(name=f"h{i}", address=f"hr:{40 * i}", type="uint16") for i in range(10)] + [
    ModbusTag(name="ir_a", address="ir:3", type="uint16"),
    ModbusTag(name="co_a", address="co:0", type="bool"),
    ModbusTag(name="di_a", address="di:1", type="bool"),
]


def driver(port: int, max_in_flight: int, unit: int = 1, timeout: float = 1) -> ModbusTcpDriver:
    # max_gap 0: one request per register tag, so the plan has more requests than a window
    return ModbusTcpDriver(ModbusTcpSource(driver="modbus_tcp", host="127.0.0.1", port=port, unit=unit,
                                           timeout=timeout, max_in_flight=max_in_flight, max_gap=0), TAGS, DriverContext.detached("test", len(TAGS)))


def test_one_request_in_flight_is_the_default() -> None:
    assert ModbusTcpSource(driver="modbus_tcp", host="plc").max_in_flight == 1


@pytest.mark.parametrize("max_in_flight", [1, 4, 16])
async def test_the_simulator_serves_requests_sent_back_to_back(tmp_path: Path, max_in_flight: int) -> None:
    sim = ModbusSimulator(plant(tmp_path), port=free_port())
    async with sim:
        d = driver(sim.port, max_in_flight)
        assert d.request_count == 13  # 10 holding-register reads, 3 of the other tables
        await d.connect()
        try:
            batches = [await d.read() for _ in range(3)]
        finally:
            await d.close()
    for batch in batches:
        assert (batch.quality == Quality.GOOD).all(), batch.error_text
        assert batch.values.tolist() == [float(sim.value_of(t.name)) for t in TAGS]
    assert d.counters()["requests"] == d.counters()["answers"] == 3 * 13
    assert d.counters()["mismatched_answers"] == d.counters()["stale_answers"] == d.counters()["timeouts"] == 0


async def test_answers_out_of_order_are_matched_by_transaction_id_and_checked_one_by_one() -> None:
    """Each window's answers come in reverse order, after a stale frame; the second request of each window is
    answered by the wrong unit: only its tags go bad, every other tag gets its own request's value."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            frames = []
            try:
                while not frames or len(reader._buffer):  # noqa: SLF001 - every request already sent
                    header = await reader.readexactly(7)
                    tid, _, length, unit = struct.unpack(">HHHB", header)
                    frames.append((tid, unit, await reader.readexactly(length - 1)))
            except asyncio.IncompleteReadError:
                return
            seen.append(len(frames))
            out = [struct.pack(">HHHB", 60000, 0, 5, 1) + b"\x03\x02\x00\x01"]  # nobody asked for 60000
            for k, (tid, unit, pdu) in reversed(list(enumerate(frames))):
                fc, start, count = struct.unpack(">BHH", pdu[:5])
                if fc in (1, 2):
                    answer = bytes((fc, (count + 7) // 8)) + b"\x01" * ((count + 7) // 8)
                else:
                    answer = bytes((fc, 2 * count)) + struct.pack(f">{count}H", *range(start, start + count))
                wrong = 1 if k == 1 else 0
                out.append(struct.pack(">HHHB", tid, 0, len(answer) + 1, unit + wrong) + answer)
            writer.write(b"".join(out))
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    d = driver(port, 4)
    try:
        await d.connect()
        batch = await d.read()
    finally:
        await d.close()
        server.close()
        await server.wait_closed()
    assert seen == [4, 4, 4, 1]  # 13 requests in windows of 4: one write each
    # the second request of each window (plan order) was answered by unit 2
    second_of_window = {int(d.plan.requests[k].positions[0]) for k in (1, 5, 9)}
    for i, tag in enumerate(TAGS):
        if i in second_of_window:
            assert batch.quality[i] == Quality.BAD and batch.errors[i] == MISMATCHED_ANSWER, tag.name
        else:
            assert batch.quality[i] == Quality.GOOD, tag.name
    good = sorted(set(range(10)) - second_of_window)
    assert batch.values[good].tolist() == [40.0 * i for i in good]  # each register answered with its address
    for i in set(range(10, 13)) - second_of_window:
        assert batch.values[i] == (3.0 if i == 10 else 1.0)  # ir:3 = its address; coil and input bits set
    assert "unit 2 answered a request to unit 1" in batch.error_text[MISMATCHED_ANSWER]
    assert d.counters()["stale_answers"] == 4 and d.counters()["mismatched_answers"] == 3


async def test_a_window_without_all_its_answers_times_out_and_late_answers_are_stale() -> None:
    """The device answers only the first request of each window (one transaction at a time, dropping the
    rest): the poll fails as no response; the next poll does not take those answers for its own."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while True:
            try:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                for _ in range(len(reader._buffer) // 12):  # noqa: SLF001 - the other requests: dropped
                    await reader.readexactly(12)
            except asyncio.IncompleteReadError:
                return
            fc, start, count = struct.unpack(">BHH", pdu[:5])
            answer = bytes((fc, 2 * count)) + b"\x00\x07" * count
            writer.write(struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    d = driver(port, 4, timeout=0.3)
    try:
        await d.connect()
        with pytest.raises(DeviceUnavailable, match="no response"):
            await d.read()
    finally:
        await d.close()
        server.close()
        await server.wait_closed()
    assert d.counters()["timeouts"] == 1 and d.counters()["answers"] == 0
