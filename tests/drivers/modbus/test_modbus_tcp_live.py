"""The Modbus TCP driver against a small pymodbus server on 127.0.0.1 started by the test."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.config import ModbusTag, ModbusTcpSource
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext, registry

UNIT = 3


def words(fmt: str, *values: object) -> list[int]:
    data = struct.pack(fmt, *values)
    return list(struct.unpack(f">{len(data) // 2}H", data))


def device() -> SimDevice:
    """hr 0..29 and ir 0..1 exist; hr 100.. does not (the server answers exception 2 there)."""
    pressure = words(">f", 123.5)
    hr = pressure[1:] + pressure[:1]  # CDAB
    hr += words(">I", 4_000_000_000)  # hr 2..3
    hr += [0] * 5 + [0b1000]  # hr 9: bit 3 set
    hr += [0] * 9 + words(">8s", b"RCP-7") + [0] * 6  # hr 19.. 'RCP-7'
    return SimDevice(
        UNIT,
        simdata=(
            [SimData(0, values=[True, False, True, False], datatype=DataType.BITS)],
            [SimData(0, values=[False, True], datatype=DataType.BITS)],
            [SimData(0, values=hr, datatype=DataType.REGISTERS)],
            [SimData(0, values=words(">h", -215), datatype=DataType.REGISTERS)],
        ),
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[ModbusTcpServer, int]]:
    srv = ModbusTcpServer(device(), address=("127.0.0.1", 0))
    await srv.serve_forever(background=True)
    port = srv.transport.sockets[0].getsockname()[1]
    yield srv, port
    await srv.shutdown()


def source(port: int, **kw: object) -> ModbusTcpSource:
    kw.setdefault("timeout", 1)
    return ModbusTcpSource(driver="modbus_tcp", host="127.0.0.1", port=port, unit=UNIT, **kw)


TAGS = [
    ModbusTag(name="pressure", address=40001, type="float32", byte_order="CDAB", unit="bar"),
    ModbusTag(name="strokes", address="40003", type="uint32"),
    ModbusTag(name="oil_temp", address=30001, type="int16", scale=0.1),
    ModbusTag(name="running", address="00001", type="bool"),
    ModbusTag(name="door_open", address=40010.3, type="bit"),
    ModbusTag(name="recipe", address="40020", type="string", length=4),
    ModbusTag(name="missing", address="40101", type="uint16"),
    ModbusTag(name="missing_too", address="40102", type="int16"),
    ModbusTag(name="alarm", address="10002", type="bool"),
]


def test_driver_is_registered_under_its_entry_point() -> None:
    spec = registry()["modbus_tcp"]
    assert spec.create is ModbusTcpDriver
    assert spec.SourceConfig is ModbusTcpSource and spec.TagConfig is ModbusTag


async def test_exception_on_one_request_marks_only_its_tags_bad(server) -> None:
    _, port = server
    driver = ModbusTcpDriver(source(port), TAGS, DriverContext.detached("test", len(TAGS)))
    assert driver.request_count == 5  # co, di, ir, hr 0..22, hr 100..101
    await driver.connect()
    try:
        batch = await driver.read()
    finally:
        await driver.close()

    assert len(batch) == len(TAGS) and batch.index is None
    good = [0, 1, 2, 3, 4, 5, 8]
    assert (batch.quality[good] == Quality.GOOD).all()
    np.testing.assert_allclose(batch.values[[0, 1, 2, 3, 4, 8]], [123.5, 4_000_000_000, -21.5, 1, 1, 1])
    assert batch.strings == {5: "RCP-7"}
    assert batch.quality[6] == batch.quality[7] == Quality.BAD
    assert np.isnan(batch.values[[6, 7]]).all()
    assert batch.errors.tolist() == [0, 0, 0, 0, 0, 0, 2, 2, 0]
    assert batch.error_text == {2: "Modbus exception 2 (illegal data address)"}
    assert (batch.ts > 0).all()


async def test_repeated_polls_on_one_connection(server) -> None:
    _, port = server
    driver = ModbusTcpDriver(source(port), TAGS[:3], DriverContext.detached("test", len(TAGS[:3])))
    await driver.connect()
    try:
        first = await driver.read()
        second = await driver.read()
    finally:
        await driver.close()
    np.testing.assert_array_equal(first.values, second.values)
    assert (second.ts >= first.ts).all()


async def test_stopped_server_raises_device_unavailable(server) -> None:
    srv, port = server
    driver = ModbusTcpDriver(source(port), TAGS[:2], DriverContext.detached("test", len(TAGS[:2])))
    await driver.connect()
    await driver.read()
    await srv.shutdown()
    with pytest.raises(DeviceUnavailable, match=f"127.0.0.1:{port}"):
        await driver.read()
    await driver.close()
    with pytest.raises(DeviceUnavailable, match="cannot connect"):
        await driver.connect()
    await driver.close()
    await driver.close()  # close twice never raises


async def test_unreachable_device_and_reads_before_connect() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        driver = ModbusTcpDriver(source(port), TAGS[:1], DriverContext.detached("test", len(TAGS[:1])))
        with pytest.raises(DeviceUnavailable, match=f"cannot connect to Modbus device at 127.0.0.1:{port}"):
            await driver.connect()
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await driver.read()
    await driver.close()


async def test_write_refuses_bad_values_before_and_missing_links_without_io(server) -> None:
    # write-back round trips are tested end to end in tests/test_writeback.py
    _, port = server
    driver = ModbusTcpDriver(source(port), TAGS[:1], DriverContext.detached("test", len(TAGS[:1])))
    with pytest.raises(ValueError, match="write a number"):
        await driver.write("pressure", "high")
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await driver.write("pressure", 1.0)


async def raw_server(on_data) -> tuple[asyncio.Server, int]:
    """A TCP peer that misbehaves: ``on_data(writer)`` decides what happens to each request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(260):
            if on_data(writer):
                return
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def test_device_that_never_answers_raises_device_unavailable() -> None:
    srv, port = await raw_server(lambda writer: False)  # reads requests, answers nothing
    async with srv:
        driver = ModbusTcpDriver(source(port, timeout=0.2), TAGS[:1], DriverContext.detached("test", len(TAGS[:1])))
        await driver.connect()
        with pytest.raises(DeviceUnavailable, match=r"no response from 127.0.0.1:\d+ unit 3 within 0.2s"):
            await driver.read()
        await driver.close()


async def test_device_closing_the_socket_during_a_request_raises_device_unavailable() -> None:
    def hang_up(writer: asyncio.StreamWriter) -> bool:
        writer.close()
        return True

    srv, port = await raw_server(hang_up)
    async with srv:
        driver = ModbusTcpDriver(source(port, timeout=30), TAGS[:1], DriverContext.detached("test", len(TAGS[:1])))  # not detected by a timeout
        await driver.connect()
        with pytest.raises(DeviceUnavailable, match="closed"):
            await driver.read()
        await driver.close()
