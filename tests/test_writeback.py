"""Write-back end to end: HTTP API and MQTT commands -> real engine -> Modbus / OPC UA simulators -> read back.

Every value is checked where it lands (the simulator's registers, decoded here with ``struct``, or the OPC UA
node read by an independent client), not only in the gateway's answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct

import paho.mqtt.publish as paho_publish
from asyncua import Client
from e2e.harness import running_gateway
from helpers import NAMESPACE, free_port, gateway_config, wait_until

from simulators.modbus_sim import ModbusSimulator

TOKEN = "s3cret-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PRESS = """\
- id: press
  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 200ms, timeout: 1s, retry_max: 1s}}
  tags:
    - {{name: pressure, address: "40001", type: float32, byte_order: CDAB}}
    - {{name: f32_cdab, address: "40133", type: float32, byte_order: CDAB, writable: true}}
    - {{name: scaled, address: "40235", type: int16, scale: 0.1, offset: -50, writable: true, min: -50, max: 100}}
    - {{name: u32, address: "40121", type: uint32, writable: true}}
    - {{name: i16, address: "40101", type: int16, writable: true}}
    - {{name: u16_centi, address: "40103", type: uint16, scale: 0.01, writable: true}}
    - {{name: coil, address: "00102", type: bool, writable: true}}
    - {{name: bit7, address: "40221.7", type: bit, writable: true}}
"""

OVEN = """\
- id: oven
  source: {{driver: opcua, endpoint: "{endpoint}", poll: 200ms, timeout: 1s, retry_max: 1s}}
  tags:
    - {{name: setpoint, node: "ns=2;i=1001", writable: true, min: 0, max: 400, unit: degC}}
    - {{name: zone1_temp, node: "ns=2;s=Oven1.Zone1.Temperature"}}
    - {{name: b_int16, node: "nsu=urn:acme:oven;s=Oven1.Bench.Int16", writable: true}}
"""


def config(tmp_path, broker, assets: str, *, token: bool = True, **sections):
    # the token comes from the environment, as in production
    return gateway_config(tmp_path, mqtt_port=broker.port, assets_yaml=assets, api_port=free_port(),
                          api={"token": "${API_TOKEN}"} if token else {}, **sections)


async def connected(rg, *assets: str) -> None:
    ok = await wait_until(lambda: all(rg.gw.assets[a].status.state == "connected" for a in assets), timeout=15)
    assert ok, {a: rg.gw.assets[a].status.state for a in assets}


def regs(sim: ModbusSimulator, address0: int, count: int) -> bytes:
    return struct.pack(f">{count}H", *sim.read_registers("hr", address0, count))


async def opcua_value(endpoint: str, node: str):
    async with Client(endpoint, timeout=5) as client:
        return await client.get_node(node).read_value()


async def mqtt_command(broker, asset: str, payload: dict | str | bytes, *, retain: bool = False) -> None:
    data = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    await asyncio.to_thread(paho_publish.single, f"{NAMESPACE}/{asset}/cmd", data, qos=1, retain=retain,
                            hostname=broker.host, port=broker.port)


def result_of(request_id):
    return lambda m: m.topic.endswith("/cmd/result") and m.json().get("id") == request_id


async def test_api_writes_land_in_the_devices_and_are_read_back(
    tmp_path, monkeypatch, mqtt_broker, modbus_sim, opcua_sim, caplog
):
    caplog.set_level(logging.DEBUG, logger="gateway")
    monkeypatch.setenv("API_TOKEN", TOKEN)
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port) + OVEN.format(endpoint=opcua_sim.endpoint))
    async with running_gateway(cfg) as rg:
        await connected(rg, "press", "oven")

        async def put(asset: str, tag: str, value):
            r = await rg.api.put(f"/api/v1/assets/{asset}/tags/{tag}", json={"value": value}, headers=AUTH)
            assert r.status_code == 200, r.text
            return r.json()

        assert (await put("press", "f32_cdab", 98.25))["value"] == 98.25
        assert regs(modbus_sim, 132, 2) == struct.pack(">f", 98.25)[2:] + struct.pack(">f", 98.25)[:2]  # CDAB

        assert (await put("press", "scaled", 33.3))["value"] == 33.3
        assert modbus_sim.read_registers("hr", 234, 1) == [833]  # (33.3 + 50) / 0.1

        assert (await put("press", "u32", 4000000123))["value"] == 4000000123
        assert struct.unpack(">I", regs(modbus_sim, 120, 2))[0] == 4000000123

        assert (await put("press", "coil", True))["value"] is True
        assert modbus_sim.read_bits("co", 101, 1) == [True]

        before = modbus_sim.read_registers("hr", 220, 1)[0]
        assert (await put("press", "bit7", True))["value"] is True
        after = modbus_sim.read_registers("hr", 220, 1)[0]
        assert after == before | 0x80  # only bit 7 changed (bits 0 and 15 of the plant kept)

        body = await put("oven", "setpoint", 195.5)
        assert body == {"asset": "oven", "tag": "setpoint", "ok": True, "value": 195.5, "requested": 195.5}
        assert await opcua_value(opcua_sim.endpoint, "ns=2;i=1001") == 195.5

        # the plant does not overwrite written setpoints, and the next polls show them
        async def polled(asset: str) -> dict:
            return {t["name"]: t["value"] for t in (await rg.api.get(f"/api/v1/assets/{asset}")).json()["tag_values"]}

        await asyncio.sleep(0.6)
        assert (await polled("press"))["f32_cdab"] == 98.25 and (await polled("press"))["scaled"] == 33.3
        assert (await polled("oven"))["setpoint"] == 195.5
        assert modbus_sim.read_registers("hr", 234, 1) == [833]

    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.writes"]
    assert any("write press/f32_cdab = 98.25 from api 127.0.0.1:" in m and "ok, read back 98.25" in m for m in lines)
    assert any("write oven/setpoint = 195.5 from api" in m for m in lines)
    assert len([m for m in lines if "press/u32" in m]) == 1  # logged once
    assert TOKEN not in caplog.text


async def test_api_refusals_say_why(tmp_path, monkeypatch, mqtt_broker, modbus_sim, opcua_sim, caplog):
    caplog.set_level(logging.DEBUG, logger="gateway")
    monkeypatch.setenv("API_TOKEN", TOKEN)
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port) + OVEN.format(endpoint=opcua_sim.endpoint))
    before = modbus_sim.read_registers("hr", 0, 300)
    async with running_gateway(cfg) as rg:
        await connected(rg, "press", "oven")

        async def put(path: str, value, headers=AUTH, *, status: int, says: str, raw: str | None = None) -> None:
            kw = {"content": raw} if raw is not None else {"json": {"value": value}}
            r = await rg.api.put(f"/api/v1/assets/{path}", headers=headers, **kw)
            assert r.status_code == status, r.text
            assert says in r.json()["detail"], r.json()

        await put("press/tags/f32_cdab", 1.0, {}, status=401, says="missing bearer token")
        await put("press/tags/f32_cdab", 1.0, {"Authorization": "Bearer wrong-token-0123456789"}, status=401,
                  says="wrong bearer token")
        await put("press/tags/f32_cdab", 1.0, {"Authorization": f"Basic {TOKEN}"}, status=401, says="missing bearer")
        await put("press/tags/pressure", 1.0, status=403, says="not writable (set writable: true")
        await put("press/tags/scaled", 100.1, status=422, says="above the maximum 100")
        await put("press/tags/f32_cdab", "12.5", status=422, says="float32: write a number")
        await put("press/tags/i16", 1.5, status=422, says="int16: 1.5 is not a whole number")
        await put("press/tags/u16_centi", 700, status=422, says="outside the uint16 range 0..65535 (raw value 70000")
        await put("press/tags/coil", "on", status=422, says="write true or false")
        await put("oven/tags/setpoint", -1, status=422, says="below the minimum 0")
        await put("oven/tags/b_int16", 1.5, status=422, says="Int16: 1.5 is not a whole number")
        await put("oven/tags/b_int16", 40000, status=422, says="outside the Int16 range")
        # the simulator's bench nodes are read-only on the server side: the server's refusal is passed on
        await put("oven/tags/b_int16", -321, status=502, says="refused the write: BadUserAccessDenied")
        await put("press/tags/nope", 1, status=404, says="has no tag 'nope'")
        await put("nope/tags/x", 1, status=404, says="unknown asset 'nope'")
        await put("press/tags/i16", None, status=422, says="must be a number, true/false or text")
        await put("press/tags/i16", None, status=400, says='{"value": ...}', raw="not json")
        r = await rg.api.put("/api/v1/assets/press/tags/i16", headers={}, content="not json")
        assert r.status_code == 401  # the token is checked before anything else
        assert r.headers["www-authenticate"] == "Bearer"

    after = modbus_sim.read_registers("hr", 0, 300)
    assert after[100:230] == before[100:230] and after[234] == before[234]  # nothing refused was written (the
    # bench constants; 230-233 follow the plant's ramp and counter)
    assert await opcua_value(opcua_sim.endpoint, "ns=2;s=Oven1.Bench.Int16") == -12345
    assert "refused (401): wrong bearer token" in caplog.text
    assert TOKEN not in caplog.text


async def test_writes_while_disconnected_fail_fast(tmp_path, monkeypatch, mqtt_broker, mqtt_subscriber, modbus_sim):
    monkeypatch.setenv("API_TOKEN", TOKEN)
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/cmd/result")
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port))
    async with running_gateway(cfg) as rg:
        await connected(rg, "press")
        await modbus_sim.stop()
        assert await wait_until(lambda: rg.gw.assets["press"].status.state == "disconnected", timeout=10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await rg.api.put("/api/v1/assets/press/tags/u32", json={"value": 7}, headers=AUTH)
        assert r.status_code == 503 and "is disconnected" in r.json()["detail"], r.text
        assert loop.time() - started < 1.0  # refused at once, not after a timeout
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 7, "id": "d1"})
        result = (await sub.next(result_of("d1"))).json()
        assert result["ok"] is False and result["code"] == "unavailable" and "disconnected" in result["error"]

        await modbus_sim.start()  # and writes work again once reconnected
        await connected(rg, "press")
        r = await rg.api.put("/api/v1/assets/press/tags/u32", json={"value": 7}, headers=AUTH)
        assert r.status_code == 200 and r.json()["value"] == 7


async def test_mqtt_commands_round_trip_and_bad_commands_are_answered(
    tmp_path, monkeypatch, mqtt_broker, mqtt_subscriber, modbus_sim, opcua_sim, caplog
):
    caplog.set_level(logging.INFO)
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/cmd/result")
    # no token: API writes are off, MQTT commands still work (the broker's ACLs authorise them)
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port) + OVEN.format(endpoint=opcua_sim.endpoint),
                 token=False)
    # a command left retained on the broker is delivered when the gateway subscribes: never executed
    # (a stale setpoint must not be replayed at every reconnect)
    await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 99, "id": "r1"}, retain=True)
    async with running_gateway(cfg) as rg:
        await connected(rg, "press", "oven")
        assert await rg.gw.uplink.wait_connected(10)
        rr = (await sub.next(result_of("r1"))).json()
        assert rr["ok"] is False and rr["code"] == "retained" and "retained" in rr["error"]
        assert struct.unpack(">I", regs(modbus_sim, 120, 2))[0] != 99
        await mqtt_command(mqtt_broker, "press", b"", retain=True)  # clear the retained message

        r = await rg.api.put("/api/v1/assets/press/tags/u32", json={"value": 1}, headers=AUTH)
        assert r.status_code == 403 and "API writes are off" in r.json()["detail"]

        await mqtt_command(mqtt_broker, "press", {"tag": "f32_cdab", "value": -7.75, "id": "c1", "by": "hmi-3"})
        await mqtt_command(mqtt_broker, "press", {"tag": "bit7", "value": False, "id": 2})
        await mqtt_command(mqtt_broker, "oven", {"tag": "setpoint", "value": 210, "id": "c3"})
        await mqtt_command(mqtt_broker, "press", {"tag": "scaled", "value": 500, "id": "c4"})
        r1 = (await sub.next(result_of("c1"))).json()
        assert r1["ok"] is True and r1["value"] == -7.75 and r1["asset"] == "press" and r1["error"] is None
        assert r1["tag"] == "f32_cdab"
        assert regs(modbus_sim, 132, 2) == struct.pack(">f", -7.75)[2:] + struct.pack(">f", -7.75)[:2]
        r2 = (await sub.next(result_of(2))).json()
        assert r2["ok"] is True and r2["value"] is False
        assert modbus_sim.read_registers("hr", 220, 1)[0] & 0x80 == 0
        r3 = (await sub.next(result_of("c3"))).json()
        assert r3["ok"] is True and r3["value"] == 210
        assert await opcua_value(opcua_sim.endpoint, "ns=2;i=1001") == 210.0
        r4 = (await sub.next(result_of("c4"))).json()
        assert r4["ok"] is False and r4["code"] == "invalid" and "above the maximum 100" in r4["error"]

        # bad commands: every one is answered (with its id when it could be read); the gateway keeps going
        await mqtt_command(mqtt_broker, "press", b"{not json")
        bad = (await sub.next(result_of(None))).json()
        assert bad["ok"] is False and bad["code"] == "malformed" and "not valid JSON" in bad["error"]
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 3})  # an id is required
        no_id = (await sub.next(result_of(None))).json()
        assert no_id["ok"] is False and no_id["code"] == "malformed" and 'needs "id"' in no_id["error"]
        assert struct.unpack(">I", regs(modbus_sim, 120, 2))[0] != 3  # not executed
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "id": "m1"})
        await mqtt_command(mqtt_broker, "press", {"value": 1, "id": "m2"})
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 1, "id": "m3", "extra": 1})
        await mqtt_command(mqtt_broker, "press", {"tag": "nope", "value": 1, "id": "m4"})
        m1 = (await sub.next(result_of("m1"))).json()
        assert m1["ok"] is False and m1["code"] == "malformed" and '"value"' in m1["error"]
        assert "needs \"tag\"" in (await sub.next(result_of("m2"))).json()["error"]
        assert "unknown field(s) 'extra'" in (await sub.next(result_of("m3"))).json()["error"]
        m4 = (await sub.next(result_of("m4"))).json()
        assert m4["code"] == "unknown" and "has no tag 'nope'" in m4["error"]
        assert "write press/? from mqtt acme/test/line1/press/cmd: refused (malformed): command: not valid JSON" \
            in caplog.text

        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 5, "id": "after"})
        assert (await sub.next(result_of("after"))).json()["ok"] is True
        assert rg.gw.assets["press"].status.state == "connected"

    assert "write press/f32_cdab = -7.75 from mqtt acme/test/line1/press/cmd id='c1' by 'hmi-3' (unverified): ok" \
        in caplog.text
