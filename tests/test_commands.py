"""Commands that are checked, and bodies that are bounded: MQTT commands and API writes against the real
gateway, a real broker and the Modbus simulator, with payloads a careless or hostile sender produces.

What a user relies on: a stale or retained command never moves a setpoint; every refused command is
answered on ``cmd/result``; no payload gives a traceback, an HTTP 500/502 or an unbounded read.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

from e2e.harness import NAMESPACE, running_gateway
from test_writeback import (
    AUTH,
    PRESS,
    TOKEN,
    config,
    connected,
    mqtt_command,
    regs,
    result_of,
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def u32(modbus_sim) -> int:
    return struct.unpack(">I", regs(modbus_sim, 120, 2))[0]


def tracebacks(caplog) -> list[str]:
    """Errors and tracebacks of the gateway, uvicorn and asyncio (a protocol callback that raised)."""
    ours = ("gateway", "uvicorn", "asyncio", "fastapi")
    return [r.getMessage() for r in caplog.records
            if r.name.startswith(ours) and (r.exc_info or r.levelno >= logging.ERROR)]


async def test_stale_unknown_and_hostile_commands_are_refused_and_answered(
    tmp_path, monkeypatch, mqtt_broker, mqtt_subscriber, modbus_sim, caplog
):
    caplog.set_level(logging.INFO)
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/cmd/result")
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port), token=False)
    async with running_gateway(cfg) as rg:
        await connected(rg, "press")
        assert await rg.gw.uplink.wait_connected(10)
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 1, "id": "base"})
        assert (await sub.next(result_of("base"))).json()["ok"] is True

        async def refused(payload, request_id, code: str, says: str, asset: str = "press") -> dict:
            await mqtt_command(mqtt_broker, asset, payload)
            result = (await sub.next(result_of(request_id))).json()
            assert result["ok"] is False and result["code"] == code, result
            assert says in result["error"], result
            return result

        await refused({"tag": "u32", "value": 11, "id": "old", "ts": now_ms() - 60_000}, "old", "stale",
                      "s old (\"ts\"); older than cmd_max_age 10 s")
        await refused({"tag": "u32", "value": 12, "id": "exp", "expires": now_ms() - 5_000}, "exp", "stale",
                      "expired")
        await refused({"tag": "u32", "value": 13, "id": "fut", "ts": now_ms() + 3_600_000}, "fut", "stale",
                      "in the future")
        await refused({"tag": "u32", "value": 14, "id": "ts?", "ts": "yesterday"}, "ts?", "malformed",
                      '"ts" must be a number')
        # an asset the gateway does not have is answered on its own result topic
        nope = await refused({"tag": "u32", "value": 15, "id": "na"}, "na", "unknown", "unknown asset 'nope'",
                             asset="nope")
        assert nope["asset"] == "nope"
        # nesting deeper than the recursion limit, and an integer of 10**400 (the id is still read)
        deep = b'{"id": "deep", "tag": "u32", "value": ' + b"[" * 50_000 + b"]" * 5_000 + b"}"
        await refused(deep, None, "invalid", "nested too deeply")
        big = b'{"id": "big", "tag": "u32", "value": 1' + b"0" * 400 + b"}"
        await refused(big, "big", "invalid", "integer of 401 digits")
        await refused({"tag": "u32", "value": [[[[1]]]], "id": "list"}, "list", "invalid", "not a list")
        await refused(b"\xff\xfe{", None, "malformed", "not valid JSON")
        await refused(b"x" * 70_000, None, "too_large", "larger than 65536")

        # fresh commands still work, with ts and expires
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 16, "id": "ok", "ts": now_ms(),
                                                  "expires": now_ms() + 10_000})
        assert (await sub.next(result_of("ok"))).json()["ok"] is True
        assert u32(modbus_sim) == 16  # none of the refused values was written in between
        assert rg.gw.assets["press"].status.state == "connected"
    assert tracebacks(caplog) == []


async def test_a_retained_command_published_while_subscribed_runs_once_and_is_refused_after_a_reconnect(
    tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim
):
    """The MQTT 3.1.1 limit, as docs/write-back.md describes it: the broker forwards a retained message to
    an existing subscription with the retain flag cleared, so the gateway cannot tell it from a live
    command; when it is delivered again at the next subscribe (retain flag set), it is refused."""
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/cmd/result")
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port), token=False)
    async with running_gateway(cfg) as rg:
        await connected(rg, "press")
        assert await rg.gw.uplink.wait_connected(10)
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 41, "id": "ret"}, retain=True)
        first = (await sub.next(result_of("ret"))).json()
        assert first["ok"] is True and u32(modbus_sim) == 41
    modbus_sim.write_registers("hr", 120, [0, 7])
    try:
        async with running_gateway(cfg) as rg:
            await connected(rg, "press")
            again = (await sub.next(result_of("ret"))).json()
            assert again["ok"] is False and again["code"] == "retained"
            assert u32(modbus_sim) == 7  # the replayed setpoint was not written
    finally:
        await mqtt_command(mqtt_broker, "press", b"", retain=True)


async def raw_request(port: int, head: bytes, body_chunks: list[bytes] = ()) -> tuple[int, bytes]:
    """Send a request head and some body bytes, then read the answer without sending the rest: the status
    line proves the server answered before it had the whole body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        rest = await asyncio.wait_for(reader.read(65536), 10)
        return int(status_line.split()[1]), rest
    finally:
        writer.close()


async def test_api_bodies_are_capped_and_hostile_json_is_422(tmp_path, monkeypatch, mqtt_broker, modbus_sim, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("API_TOKEN", TOKEN)
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port))
    async with running_gateway(cfg) as rg:
        await connected(rg, "press")
        url = "/api/v1/assets/press/tags/u32"
        base = f"PUT {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"

        # a declared 300 MB body is refused from its header, before a byte of it is sent
        status, rest = await raw_request(rg.api_port, (base + "Content-Length: 300000000\r\n\r\n").encode())
        assert status == 413 and b"larger than 65536 bytes" in rest
        # a chunked body is refused once it passes the cap: 128 KiB sent of a body that never ends
        chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
        status, rest = await raw_request(rg.api_port, (base + "Transfer-Encoding: chunked\r\n\r\n").encode(),
                                         [chunk] * 8)
        assert status == 413

        async def put(content: bytes, status: int, says: str) -> None:
            r = await rg.api.put(url, content=content, headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == status, r.text
            assert says in r.json()["detail"], r.json()

        await put(b'{"value": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 422, "nested too deeply")
        await put(b'{"value": 1' + b"0" * 400 + b"}", 422, "integer of 401 digits")
        await put(b'{"value": 1e400}', 422, "finite")
        await put(b'{"value": {"a": [1, 2]}}', 422, "not an object")
        await put(b'{"a":' * 12_000, 422, "nested too deeply")
        r = await rg.api.put(url, json={"value": 77}, headers=AUTH)  # and the API still writes
        assert r.status_code == 200 and u32(modbus_sim) == 77
    assert tracebacks(caplog) == []


async def test_values_from_outside_cannot_forge_log_lines(
    tmp_path, monkeypatch, mqtt_broker, mqtt_subscriber, modbus_sim, caplog
):
    caplog.set_level(logging.DEBUG, logger="gateway")
    monkeypatch.setenv("API_TOKEN", TOKEN)
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/cmd/result")
    forged = "\nwrite press/u32 = 1 from api 10.0.0.1:1: ok, read back 1 (1 ms)"
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port))
    async with running_gateway(cfg) as rg:
        await connected(rg, "press")
        assert await rg.gw.uplink.wait_connected(10)
        await mqtt_command(mqtt_broker, "press", {"tag": "u32" + forged, "value": 1, "id": "f1", "by": forged})
        assert (await sub.next(result_of("f1"))).json()["code"] == "unknown"
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 1, "id": "f2\r\n" + forged})
        assert (await sub.next(result_of("f2\r\n" + forged))).json()["ok"] is True
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 1, "id": "f3", forged: 1})
        assert "unknown field" in (await sub.next(result_of("f3"))).json()["error"]
        # path segments of the API, with and without a token (the refusal of a missing token is logged too)
        for headers in ({}, AUTH):
            r = await rg.api.put("/api/v1/assets/press%0Aforged/tags/u32%0D%0Aok",
                                 json={"value": 1}, headers=headers)
            assert r.status_code in (401, 404)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
    assert any("write press/u32\\nwrite press/u32 = 1 from api" in m for m in lines)  # logged, escaped
    assert any("write press\\nforged/u32\\r\\nok from api" in m for m in lines)
    assert [m for m in lines if "\n" in m or "\r" in m] == []


async def test_cmd_max_age_is_a_key_of_the_uplink(tmp_path, mqtt_broker, mqtt_subscriber, modbus_sim):
    sub = await mqtt_subscriber(f"{NAMESPACE}/+/cmd/result")
    cfg = config(tmp_path, mqtt_broker, PRESS.format(port=modbus_sim.port), token=False, mqtt={"cmd_max_age": "2m"})
    async with running_gateway(cfg) as rg:
        await connected(rg, "press")
        assert await rg.gw.uplink.wait_connected(10)
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 21, "id": "a60", "ts": now_ms() - 60_000})
        assert (await sub.next(result_of("a60"))).json()["ok"] is True  # 60 s old is fresh within 2 min
        await mqtt_command(mqtt_broker, "press", {"tag": "u32", "value": 22, "id": "a180", "ts": now_ms() - 180_000})
        result = (await sub.next(result_of("a180"))).json()
        assert result["code"] == "stale" and "cmd_max_age 120 s" in result["error"], result
    assert u32(modbus_sim) == 21
