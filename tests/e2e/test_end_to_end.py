"""YAML -> simulators -> gateway -> real broker and status API, as an integrator would see it."""

from __future__ import annotations

import asyncio

import pytest

from harness import data_of, latest_values, running_gateway
from helpers import NAMESPACE, free_port, gateway_config, wait_until

ORDERS = ["abcd", "cdab", "badc", "dcba"]
BASE = {"int32": 40111, "uint32": 40121, "float32": 40131, "int64": 40141, "uint64": 40161, "float64": 40181}
WIDTH = {"int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4, "float64": 4}
# values differ from the plant's defaults, so a passing test proves they travelled from our write
NEW = {"int32": -1234567, "uint32": 4000000123, "float32": 98.25, "int64": -9007199254740,
       "uint64": 9007199254740991, "float64": 12345.678901}


def bench_points() -> tuple[list[dict], dict[str, object]]:
    """The simulator's test-bench points as gateway tags, and the value each is set to."""
    tags: list[dict] = []
    expected: dict[str, object] = {}

    def add(name, address, type_, value, **extra):
        tags.append({"name": name, "address": address, "type": type_, **extra})
        expected[name] = value

    add("b_int16_abcd", "40101", "int16", -2222)
    add("b_int16_badc", "40102", "int16", -2222, byte_order="BADC")
    add("b_uint16_abcd", "40103", "uint16", 65000)
    add("b_uint16_badc", "40104", "uint16", 65000, byte_order="BADC")
    for t, base in BASE.items():
        for k, order in enumerate(ORDERS):
            add(f"b_{t}_{order}", str(base + k * WIDTH[t]), t, NEW[t], byte_order=order.upper())
    add("b_string_abcd", "40201", "string", "NEW-01", length=5)
    add("b_string_badc", "40211", "string", "XYZ", length=4, byte_order="BADC")
    add("b_bit0", "40221.0", "bit", 0.0)
    add("b_bit7", "40221.7", "bit", 1.0)
    add("b_bit15", "40221.15", "bit", 0.0)
    add("b_scaled", "40235", "int16", 33.3, scale=0.1, offset=-50)
    add("b_ir_int16", "30101", "int16", -7)
    add("b_ir_uint16", "30102", "uint16", 12345, byte_order="BADC")
    add("b_ir_float32", "30103", "float32", -0.5, byte_order="CDAB")
    add("b_ir_uint32", "30105", "uint32", 123456789, byte_order="DCBA")
    add("b_ir_int64", "30107", "int64", -42, byte_order="BADC")
    add("b_ir_bit", "30111.5", "bit", 0.0)
    add("b_coil_on", "00101", "bool", 0.0)
    add("b_coil_off", "00102", "bool", 1.0)
    add("b_di_on", "10101", "bool", 0.0)
    add("b_di_off", "10102", "bool", 1.0)
    return tags, expected


def yaml_tags(tags: list[dict]) -> str:
    lines = []
    for t in tags:
        fields = ", ".join(f'{k}: "{v}"' if k == "address" else f"{k}: {v}" for k, v in t.items())
        lines.append(f"            - {{{fields}}}")
    return "\n".join(lines)


async def test_every_modbus_type_and_byte_order_arrives_decoded_on_mqtt(
    tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim
):
    tags, expected = bench_points()
    sub = await mqtt_subscriber(f"{NAMESPACE}/#")
    cfg = gateway_config(
        tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
        assets_yaml=f"""\
        - id: bench
          source: {{driver: modbus_tcp, host: 127.0.0.1, port: {modbus_sim.port}, poll: 100ms, timeout: 1s}}
          tags:
{yaml_tags(tags)}
        """,
    )
    async with running_gateway(cfg) as rg:
        # the plant's own values first, then our writes on the simulator, which must show up decoded
        first = await latest_values(sub, "bench", {"b_float32_cdab": -1234.5, "b_string_abcd": "BENCH-01"})
        assert first["b_float32_cdab"] == -1234.5 and first["b_int32_dcba"] == -123456789
        for name, value in expected.items():
            modbus_sim.set(name, value)
        seen = await latest_values(sub, "bench", expected)
        wrong = {k: (seen.get(k), v) for k, v in expected.items() if seen.get(k) != v}
        assert not wrong, f"decoded (got, expected): {wrong}"
        detail = (await rg.api.get("/api/v1/assets/bench")).json()
        assert detail["state"] == "connected" and detail["bad_tags"] == 0
        assert detail["polls"] > 0 and detail["latency_ms_p50"] is not None


PRESS = """\
- id: press-3
  description: Hydraulic press 3
  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 100ms, timeout: 500ms, retry_max: 1s}}
  tags:
    - {{name: pressure, address: 40001, type: float32, byte_order: CDAB, unit: bar, aggregate: [min, max, mean]}}
    - {{name: strokes, address: 40003, type: uint32}}
    - {{name: oil_temp, address: 30001, type: int16, scale: 0.1, unit: degC, deadband: 0.2}}
    - {{name: running, address: "00001", type: bool}}
    - {{name: door_open, address: 40010.3, type: bit}}
    - {{name: recipe, address: 40020, type: string, length: 8}}
"""

OVEN = """\
- id: oven-1
  source: {{driver: opcua, endpoint: "{endpoint}", poll: 200ms, timeout: 1s, retry_max: 1s}}
  tags:
    - {{name: zone1_temp, node: "ns=2;s=Oven1.Zone1.Temperature", unit: degC}}
    - {{name: door_open, node: "nsu=urn:acme:oven;s=Oven1.DoorOpen"}}
"""


async def test_opcua_values_and_nsu_ids_arrive_on_mqtt(tmp_path, mqtt_broker, mqtt_subscriber, opcua_sim):
    sub = await mqtt_subscriber(f"{NAMESPACE}/#")
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
                       assets_yaml=OVEN.format(endpoint=opcua_sim.endpoint))
    opcua_sim.set("zone1_temp", 181.25)
    opcua_sim.set("door_open", True)
    async with running_gateway(cfg) as rg:
        seen = await latest_values(sub, "oven-1", {"zone1_temp": 181.25, "door_open": 1.0})
        assert seen == {"zone1_temp": 181.25, "door_open": 1.0}
        opcua_sim.set("door_open", False)  # the nsu= id keeps working after the first read
        seen = await latest_values(sub, "oven-1", {"door_open": 0.0})
        assert seen.get("door_open") == 0.0
        tags = {t["name"]: t for t in (await rg.api.get("/api/v1/assets/oven-1")).json()["tag_values"]}
        assert tags["zone1_temp"]["value"] == 181.25 and tags["zone1_temp"]["unit"] == "degC"
        assert tags["zone1_temp"]["quality"] == "good"


async def test_deadband_suppresses_small_changes_and_aggregates_summarise_the_window(
    tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim
):
    sub = await mqtt_subscriber(f"{NAMESPACE}/press-3/data")
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(), mqtt={"publish_interval": "500ms"},
                       assets_yaml=PRESS.format(port=modbus_sim.port))
    modbus_sim.set("oil_temp", 45.0)
    modbus_sim.set("pressure", 150.0)
    async with running_gateway(cfg):
        await latest_values(sub, "press-3", {"oil_temp": 45.0, "pressure": 150.0})
        modbus_sim.set("oil_temp", 45.1)  # within the 0.2 deadband: not sent
        msgs = [await sub.next(data_of("press-3")) for _ in range(3)]
        assert all("oil_temp" not in m.json()["tags"] for m in msgs)
        pressure = msgs[-1].json()["tags"]["pressure"]
        # constant pressure: every sample of the window is 150, ~5 polls per 500 ms publish interval
        assert (pressure["min"], pressure["max"], pressure["mean"]) == (150.0, 150.0, 150.0)
        assert 2 <= pressure["n"] <= 8
        modbus_sim.set("oil_temp", 45.3)  # 0.3 from the last value sent: sent
        seen = await latest_values(sub, "press-3", {"oil_temp": 45.3})
        assert seen["oil_temp"] == 45.3


async def test_a_stopped_plc_goes_disconnected_and_back_while_the_other_asset_keeps_publishing(
    tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim, opcua_sim
):
    sub = await mqtt_subscriber(f"{NAMESPACE}/#")
    cfg = gateway_config(
        tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
        assets_yaml=PRESS.format(port=modbus_sim.port) + OVEN.format(endpoint=opcua_sim.endpoint),
    )
    status_topic = f"{NAMESPACE}/press-3/status"

    def status(value):
        return lambda m: m.topic == status_topic and m.text == value

    async with running_gateway(cfg) as rg:
        await sub.next(status("connected"))
        await sub.next(data_of("press-3"))
        await modbus_sim.stop()
        await sub.next(status("disconnected"))
        detail = (await rg.api.get("/api/v1/assets/press-3")).json()
        assert detail["state"] == "disconnected" and detail["last_error"]
        assert {t["quality"] for t in detail["tag_values"]} == {"bad"}
        # the oven keeps publishing while the press is down
        mark = len(sub.messages)
        opcua_sim.set("zone1_temp", 200.5)
        await sub.next(lambda m: data_of("oven-1")(m) and sub.messages.index(m) >= mark
                       and m.json()["tags"].get("zone1_temp", {}).get("v") == 200.5)
        # the press's tags went bad on MQTT too, with the reason
        bad = await sub.next(lambda m: data_of("press-3")(m) and m.json()["tags"]["pressure"]["q"] == "bad")
        assert "disconnected" in bad.json()["tags"]["pressure"]["err"]
        await modbus_sim.start()
        await sub.next(status("connected"), timeout=15)
        assert await wait_until(lambda: rg.gw.assets["press-3"].status.reconnects == 1)
        await sub.next(lambda m: data_of("press-3")(m) and m.json()["tags"].get("pressure", {}).get("q") == "good")
        listing = (await rg.api.get("/api/v1/assets")).json()
        assert {a["id"]: a["state"] for a in listing} == {"press-3": "connected", "oven-1": "connected"}


async def test_status_api_404s_history_and_health(tmp_path, mqtt_broker, modbus_sim):
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
                         assets_yaml=PRESS.format(port=modbus_sim.port))
    modbus_sim.set("pressure", 120.5)
    async with running_gateway(cfg) as rg:
        assert (await rg.api.get("/livez")).status_code == 200
        assert await wait_until(lambda: rg.gw.ready)
        assert (await rg.api.get("/readyz")).json()["status"] == "ready"
        await asyncio.sleep(1.0)
        hist = (await rg.api.get("/api/v1/assets/press-3/tags/pressure/history", params={"seconds": 60})).json()
        assert len(hist["v"]) >= 5 and set(hist["v"]) == {120.5} and hist["unit"] == "bar"
        assert hist["ts"] == sorted(hist["ts"])
        r = await rg.api.get("/api/v1/assets/nope")
        assert r.status_code == 404 and "unknown asset 'nope'" in r.json()["detail"]
        r = await rg.api.get("/api/v1/assets/press-3/tags/nope/history")
        assert r.status_code == 404 and "no tag 'nope'" in r.json()["detail"]
        assert (await rg.api.get("/docs")).status_code == 200
        gw = (await rg.api.get("/api/v1/gateway")).json()
        assert gw["uplink"]["connected"] is True and gw["id"] == "test-gw"


async def test_broker_down_at_start_is_not_fatal(tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim):
    await mqtt_broker.stop()
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
                         assets_yaml=PRESS.format(port=modbus_sim.port))
    async with running_gateway(cfg) as rg:
        assert await wait_until(lambda: rg.gw.assets["press-3"].status.polls > 3)
        r = await rg.api.get("/readyz")
        assert r.status_code == 503 and r.json()["broker_connected"] is False
        await mqtt_broker.start()
        sub = await mqtt_subscriber(f"{NAMESPACE}/#")
        assert await wait_until(lambda: rg.gw.ready, timeout=15)
        msg = await sub.next(data_of("press-3"), timeout=15)
        assert msg.json()["tags"]  # data flows once the broker is there


async def test_unreachable_device_at_start_does_not_stop_the_others(tmp_path, mqtt_broker, opcua_sim):
    dead_port = free_port()
    cfg = gateway_config(
        tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
        assets_yaml=PRESS.format(port=dead_port) + OVEN.format(endpoint=opcua_sim.endpoint),
    )
    async with running_gateway(cfg) as rg:
        assert await wait_until(lambda: rg.gw.assets["oven-1"].status.polls > 3)
        press = (await rg.api.get("/api/v1/assets/press-3")).json()
        assert press["state"] == "disconnected" and press["connect_failures"] >= 1
        assert press["last_error"].startswith("connect:")


async def test_modbus_exception_marks_only_that_reads_tags_bad_and_is_logged_once(
    tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim, caplog
):
    sub = await mqtt_subscriber(f"{NAMESPACE}/#")
    # the simulator has 300 holding registers: 40401 is answered with exception 2 (illegal data address)
    cfg = gateway_config(
        tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
        assets_yaml=f"""\
        - id: press
          source: {{driver: modbus_tcp, host: 127.0.0.1, port: {modbus_sim.port}, poll: 50ms, max_gap: 0}}
          tags:
            - {{name: strokes, address: 40003, type: uint32}}
            - {{name: ghost, address: 40401, type: int16}}
            - {{name: oil_temp, address: 30001, type: int16, scale: 0.1}}
        """,
    )
    modbus_sim.set("strokes", 4242)
    with caplog.at_level("INFO", logger="gateway"):
        async with running_gateway(cfg) as rg:
            msg = await sub.next(data_of("press"))
            tags = msg.json()["tags"]
            assert tags["ghost"]["q"] == "bad" and tags["ghost"]["v"] is None
            assert tags["ghost"]["err"] == "Modbus exception 2 (illegal data address)"
            assert tags["strokes"] == {"ts": tags["strokes"]["ts"], "v": 4242.0, "q": "good"}
            assert tags["oil_temp"]["q"] == "good"
            assert await wait_until(lambda: rg.gw.assets["press"].status.polls >= 20)
            detail = (await rg.api.get("/api/v1/assets/press")).json()
            assert detail["state"] == "connected" and detail["bad_tags"] == 1
            assert detail["tag_errors"] >= 20 and "illegal data address" in detail["last_error"]
    bad_logs = [r for r in caplog.records if "tag(s) bad" in r.getMessage()]
    assert len(bad_logs) == 1, [r.getMessage() for r in bad_logs]  # once per failure, not once per poll


async def test_a_failing_uplink_stops_the_daemon_in_order_instead_of_hanging(tmp_path, mqtt_broker, modbus_sim):
    from gateway.config import load_config
    from gateway.daemon import build
    from gateway.uplink.tls import UplinkConfigError

    from gateway.config import TlsSection

    cfg_path = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
                            assets_yaml=PRESS.format(port=modbus_sim.port))
    cfg = load_config(cfg_path)  # validate loads mqtt.tls files too: the CA file goes missing after it
    cfg.mqtt.tls = TlsSection(ca_file=str(tmp_path / "missing-ca.pem"))
    gw = build(cfg)
    sock = gw.bind_api()
    port = sock.getsockname()[1]
    with pytest.raises(UplinkConfigError, match="cannot load CA bundle"):
        async with asyncio.timeout(10):
            await gw.run(asyncio.Event(), sock)
    assert gw.assets["press-3"].status.state == "stopped"
    from simulators.local_broker import port_open

    assert not port_open("127.0.0.1", port)
