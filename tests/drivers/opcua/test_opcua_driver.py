"""The OPC UA driver against a live asyncua server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from asyncua import ua

from drivers.opcua.config import OpcUaSource, OpcUaTag
from drivers.opcua.decode import ERR_ARRAY, ERR_UNKNOWN_NAMESPACE, ERR_UNSUPPORTED_TYPE
from drivers.opcua.driver import DEFAULT_MAX_NODES_PER_READ, OpcUaDriver
from gateway.batch import Quality
from gateway.driver import DeviceUnavailable, DriverContext

from opcua_testserver import GUID, SOURCE_TS, OvenServer, free_port, start_oven_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAD_NODE_ID_UNKNOWN = np.uint32(ua.StatusCodes.BadNodeIdUnknown).view(np.int32)


def make_driver(endpoint: str, tags: list[dict], **source) -> OpcUaDriver:
    src = OpcUaSource(driver="opcua", endpoint=endpoint, **{"timeout": "1s", **source})
    return OpcUaDriver(src, [OpcUaTag(**t) for t in tags], DriverContext.detached("test", len(tags)))


def client_tasks() -> list[asyncio.Task]:
    """asyncua client background tasks still alive (keepalive supervisor, channel renewal, watchdog)."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and "asyncua/client/" in getattr(t.get_coro(), "cr_code", None).co_filename
    ]


async def read_once(endpoint: str, tags: list[dict], **source):
    drv = make_driver(endpoint, tags, **source)
    await drv.connect()
    try:
        return drv, await drv.read()
    finally:
        await drv.close()


async def test_values_and_types(oven: OvenServer) -> None:
    tags = [
        {"name": "temp", "node": "ns=2;s=Oven1.Zone1.Temperature"},
        {"name": "door", "node": "ns=2;s=Oven1.DoorOpen"},
        {"name": "setpoint", "node": "ns=2;s=Oven1.Setpoint"},
        {"name": "i16", "node": "ns=2;i=1001"},
        {"name": "u32", "node": "ns=2;i=1002"},
        {"name": "i64", "node": "ns=2;i=1003"},
        {"name": "byte", "node": "ns=2;i=1004"},
        {"name": "by_guid", "node": f"ns=2;g={GUID}"},
        {"name": "by_opaque", "node": "ns=2;b=AQJvdmVu"},
        {"name": "server_state", "node": "i=2259"},
    ]
    drv, b = await read_once(oven.endpoint, tags)
    assert b.index is None and len(b) == len(tags)
    assert b.values.dtype == np.float64 and b.ts.dtype == np.int64
    assert b.quality.dtype == np.uint8 and b.errors.dtype == np.int32
    np.testing.assert_array_equal(
        b.values, [182.5, 1.0, 180.25, -7.0, 4e9, -(2.0**40), 200.0, 12345.0, 42.0, 0.0]
    )
    assert (b.quality == Quality.GOOD).all() and (b.errors == 0).all()
    assert drv.namespaces[2] == "urn:acme:oven"


async def test_strings_go_to_strings(oven: OvenServer) -> None:
    tags = [
        {"name": "temp", "node": "ns=2;s=Oven1.Zone1.Temperature"},
        {"name": "recipe", "node": "ns=2;s=Oven1.Recipe"},
        {"name": "mode", "node": "ns=2;s=Oven1.Mode"},
    ]
    _, b = await read_once(oven.endpoint, tags)
    assert b.strings == {1: "PLA-200", 2: "Heating"}
    assert (b.quality == Quality.GOOD).all()
    assert np.isnan(b.values[1:]).all()


async def test_nsu_resolved_against_namespace_array(oven: OvenServer) -> None:
    tags = [
        {"name": "door", "node": "nsu=urn:acme:oven;s=Oven1.DoorOpen"},
        {"name": "count", "node": "nsu=urn:acme:oven;i=1001"},
        {"name": "ghost", "node": "nsu=urn:acme:nowhere;s=Oven1.DoorOpen"},
        {"name": "temp", "node": "ns=2;s=Oven1.Zone1.Temperature"},
    ]
    _, b = await read_once(oven.endpoint, tags)
    np.testing.assert_array_equal(b.values[[0, 1, 3]], [1.0, -7.0, 182.5])
    assert list(b.quality) == [Quality.GOOD, Quality.GOOD, Quality.BAD, Quality.GOOD]
    assert b.errors[2] == ERR_UNKNOWN_NAMESPACE
    assert "urn:acme:nowhere" in b.error_text[ERR_UNKNOWN_NAMESPACE]


async def test_unknown_node_bad_others_good(oven: OvenServer) -> None:
    tags = [
        {"name": "temp", "node": "ns=2;s=Oven1.Zone1.Temperature"},
        {"name": "typo", "node": "ns=2;s=Oven1.Zone1.Temprature"},
        {"name": "door", "node": "ns=2;s=Oven1.DoorOpen"},
    ]
    _, b = await read_once(oven.endpoint, tags)
    assert list(b.quality) == [Quality.GOOD, Quality.BAD, Quality.GOOD]
    assert np.isnan(b.values[1]) and b.values[0] == 182.5 and b.values[2] == 1.0
    assert b.errors[1] == BAD_NODE_ID_UNKNOWN
    assert b.error_text[int(BAD_NODE_ID_UNKNOWN)] == "BadNodeIdUnknown"


async def test_arrays_and_unsupported_types_marked_bad(oven: OvenServer) -> None:
    tags = [
        {"name": "profile", "node": "ns=2;s=Oven1.Profile"},
        {"name": "started", "node": "ns=2;s=Oven1.StartedAt"},
        {"name": "temp", "node": "ns=2;s=Oven1.Zone1.Temperature"},
    ]
    _, b = await read_once(oven.endpoint, tags)
    assert list(b.quality) == [Quality.BAD, Quality.BAD, Quality.GOOD]
    assert b.errors[0] == ERR_ARRAY + ua.VariantType.Double
    assert "array of Double" in b.error_text[int(b.errors[0])]
    assert b.errors[1] == ERR_UNSUPPORTED_TYPE + ua.VariantType.DateTime
    assert "DateTime" in b.error_text[int(b.errors[1])]


@pytest.mark.parametrize(
    ("status", "quality"),
    [
        (ua.StatusCodes.Good, Quality.GOOD),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN),
        (ua.StatusCodes.BadSensorFailure, Quality.BAD),
        (ua.StatusCodes.BadDeviceFailure, Quality.BAD),
    ],
)
async def test_quality_from_status_code(oven: OvenServer, status: int, quality: Quality) -> None:
    await oven.write(
        "ns=2;s=Oven1.Quality",
        ua.DataValue(ua.Variant(55.5, ua.VariantType.Double), StatusCode=ua.StatusCode(status)),
    )
    tags = [{"name": "q", "node": "ns=2;s=Oven1.Quality"}, {"name": "door", "node": "ns=2;s=Oven1.DoorOpen"}]
    _, b = await read_once(oven.endpoint, tags)
    assert b.quality[0] == quality and b.quality[1] == Quality.GOOD
    if quality == Quality.BAD:
        assert np.isnan(b.values[0])
    else:
        assert b.values[0] == 55.5  # an uncertain value is still the value
    if quality == Quality.GOOD:
        assert b.errors[0] == 0
    else:
        code = np.uint32(status).view(np.int32)
        assert b.errors[0] == code
        assert b.error_text[int(code)] == ua.StatusCode(status).name


async def test_source_timestamp_and_scale_offset(oven: OvenServer) -> None:
    await oven.write(
        "ns=2;s=Oven1.Quality",
        ua.DataValue(ua.Variant(100.0, ua.VariantType.Double), SourceTimestamp=SOURCE_TS),
    )
    tags = [{"name": "q", "node": "ns=2;s=Oven1.Quality", "scale": 0.1, "offset": -2.0}]
    _, b = await read_once(oven.endpoint, tags)
    assert b.values[0] == pytest.approx(8.0)
    assert b.ts[0] == int(SOURCE_TS.timestamp()) * 10**9 + 123456 * 1000


async def test_max_nodes_per_read_split(oven: OvenServer) -> None:
    nodes = [
        "ns=2;s=Oven1.Zone1.Temperature",
        "ns=2;s=Oven1.DoorOpen",
        "ns=2;i=1001",
        "ns=2;s=Oven1.Recipe",
        "ns=2;s=Oven1.Nope",
    ]
    tags = [{"name": f"t{i}", "node": n} for i, n in enumerate(nodes)]
    drv, b = await read_once(oven.endpoint, tags, max_nodes_per_read=2)
    assert drv.max_nodes_per_read == 2
    assert b.values[0] == 182.5 and b.values[1] == 1.0 and b.values[2] == -7.0
    assert b.strings == {3: "PLA-200"}
    assert list(b.quality) == [Quality.GOOD] * 4 + [Quality.BAD]


async def test_max_nodes_per_read_from_server(oven: OvenServer) -> None:
    drv, _ = await read_once(oven.endpoint, [{"name": "door", "node": "ns=2;s=Oven1.DoorOpen"}])
    limit_node = ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
    limit = await oven.server.get_node(limit_node).read_value()
    assert drv.max_nodes_per_read == (limit or DEFAULT_MAX_NODES_PER_READ)


async def test_reads_repeatedly_and_reconnects(oven: OvenServer, caplog: pytest.LogCaptureFixture) -> None:
    drv = make_driver(oven.endpoint, [{"name": "q", "node": "ns=2;s=Oven1.Quality"}])
    with caplog.at_level(logging.WARNING, logger="asyncua.client"):
        for session in range(2):
            await drv.connect()
            assert client_tasks() != []
            try:
                for v in (1.0, 2.0, 3.0):
                    value = ua.DataValue(ua.Variant(v + session, ua.VariantType.Double))
                    await oven.write("ns=2;s=Oven1.Quality", value)
                    assert (await drv.read()).values[0] == v + session
            finally:
                await drv.close()
    assert client_tasks() == []
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await drv.read()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_username_password(oven: OvenServer) -> None:
    tags = [{"name": "door", "node": "ns=2;s=Oven1.DoorOpen"}]
    _, b = await read_once(oven.endpoint, tags, username="operator", password="s3cret")
    assert b.values[0] == 1.0
    drv = make_driver(oven.endpoint, tags, username="operator", password="wrong")
    with pytest.raises(DeviceUnavailable, match="Bad"):
        await drv.connect()
    await drv.close()


async def test_unreachable_server_raises_device_unavailable() -> None:
    drv = make_driver(f"opc.tcp://127.0.0.1:{free_port()}/", [{"name": "x", "node": "i=2259"}])
    with pytest.raises(DeviceUnavailable, match="127.0.0.1"):
        await drv.connect()
    with pytest.raises(DeviceUnavailable):
        await drv.read()
    await drv.close()


async def test_silent_server_times_out() -> None:
    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        drv = make_driver(f"opc.tcp://127.0.0.1:{port}/", [{"name": "x", "node": "i=2259"}], timeout="200ms")
        with pytest.raises(DeviceUnavailable, match="timeout"):
            await drv.connect()
        await drv.close()
    finally:
        silent.close()


async def test_server_stopped_then_close(caplog: pytest.LogCaptureFixture) -> None:
    srv = await start_oven_server()
    drv = make_driver(srv.endpoint, [{"name": "door", "node": "ns=2;s=Oven1.DoorOpen"}])
    try:
        await drv.connect()
        assert (await drv.read()).values[0] == 1.0
    finally:
        await srv.server.stop()
    with pytest.raises(DeviceUnavailable):
        await drv.read()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asyncua.client"):
        await drv.close()
        await drv.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert client_tasks() == []
    with pytest.raises(DeviceUnavailable):
        await drv.connect()
    await drv.close()


async def test_write_without_a_session_is_device_unavailable(oven: OvenServer) -> None:
    # write-back round trips are tested end to end in tests/test_writeback.py
    drv = make_driver(oven.endpoint, [{"name": "door", "node": "ns=2;s=Oven1.DoorOpen"}])
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await drv.write("door", 1)
