"""Logs that stay readable when devices misbehave: flapping is summarised, bad frames are counted, and
stream batches name the right tags. Real gateway, real broker, simulated instruments on ptys and the
Modbus simulator behind a corrupting TCP hop; log lines are counted, never timed."""

from __future__ import annotations

import asyncio
import logging
import re

from e2e.harness import running_gateway
from helpers import free_port, gateway_config, wait_until

from gateway.logsafe import ChangeLog
from simulators.serial_instrument import SerialInstrument

SCALE = r"""
- id: scale-1
  source:
    driver: serial_line
    port: {port}
    mode: poll
    command: 'P\r\n'
    poll: 20ms
    timeout: 500ms
    pattern: '(?P<status>ST|US),GS,(?P<weight>[-+]\d+\.\d+)kg'
    checksum: {{kind: xor8, separator: '*'}}
  tags:
    - {{name: weight_g, group: weight, unit: g, scale: 1000}}
    - {{name: stable, group: status, type: bool, true_values: [ST], false_values: [US]}}
"""
SUMMARY = "more state change(s)"


def messages(caplog, logger: str = "gateway.source") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_change_log_logs_first_changes_then_one_summary_per_interval(caplog):
    caplog.set_level(logging.INFO, logger="t")
    now = [0.0]
    changes = ChangeLog(logging.getLogger("t"), "asset a", 60.0, clock=lambda: now[0])
    for i in range(1000):  # 10 changes a second for 100 s
        now[0] = i / 10
        if i % 2:
            changes.change("good", logging.INFO, "all tags good again")
        else:
            changes.change("bad", logging.WARNING, "%d tag(s) bad", 3)
        changes.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["asset a: 3 tag(s) bad", "asset a: all tags good again"]
    assert len(lines) == 3  # the two first changes and the summary at 60 s
    assert lines[2] == (
        "asset a: 598 more state change(s) in the last 60 s not logged one by one (bad 299, "
        "good 299); now: all tags good again"
    )
    now[0] = 120.0
    changes.tick()  # the counted changes of the second interval
    assert caplog.records[-1].getMessage().startswith("asset a: 400 more state change(s) in the last 60 s")
    assert caplog.records[-1].getMessage().endswith("now: all tags good again")
    now[0] = 500.0  # after a quiet interval the next change is logged at once again
    changes.change("bad", logging.WARNING, "%d tag(s) bad", 1)
    assert caplog.records[-1].getMessage() == "asset a: 1 tag(s) bad"
    assert len(caplog.records) == 5 and changes.suppressed == 998


async def test_a_flapping_instrument_logs_its_first_changes_and_then_summaries(tmp_path, mqtt_broker, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    async with SerialInstrument("scale", checksum="xor8", seed=3) as scale:
        scale.faults.bad_checksum = 0.5  # every other reply, at random, is rejected: all tags bad, then good
        path = gateway_config(
            tmp_path,
            mqtt_port=mqtt_broker.port,
            assets_yaml=SCALE.format(port=scale.path),
            api_port=free_port(),
            gateway={"log_summary_interval": "400ms"},
        )
        async with running_gateway(path) as rg:
            asset = rg.gw.assets["scale-1"]
            assert await wait_until(
                lambda: asset.changes.suppressed >= 40 and any(SUMMARY in m for m in messages(caplog)), timeout=30
            )
            changes = asset.changes.suppressed
    lines = messages(caplog)
    summaries = [m for m in lines if SUMMARY in m]
    bad = [m for m in lines if "tag(s) bad" in m and SUMMARY not in m]
    good = [m for m in lines if m == "asset scale-1: all tags good again"]
    assert len(bad) == 1 and len(good) == 1, lines  # the first failure and the first recovery, in full
    assert "checksum" in bad[0]
    assert len(lines) < 2 + changes / 4, (len(lines), changes)
    counted = sum(int(re.search(r"(\d+) more state change", m).group(1)) for m in summaries)
    assert 0 < counted <= changes  # what the summaries report was counted, nothing invented
    assert re.search(r"\(tags bad \d+, tags good \d+\); now: ", summaries[0]), summaries[0]


THERMO_OPTIONAL = r"'T1=(?P<t1>[-+]\d+\.\d+);T2=(?P<t2>[-+]\d+\.\d+);(?P<status>OK|ER)(?:;X=(?P<x>\d+))?'"


async def test_stream_batches_name_the_bad_tag_by_its_plan_position(tmp_path, mqtt_broker, caplog):
    """A streamed line without the optional group gives a batch of some tags (``index``); the bad one must
    be named by its own name, and the others staying good must not announce 'all tags good again'."""
    caplog.set_level(logging.INFO, logger="gateway")
    async with SerialInstrument("thermo", mode="stream", rate=50) as thermo:
        asset = f"""\
- id: probe
  source: {{driver: serial_line, port: {thermo.path}, mode: stream, poll: 50ms, pattern: {THERMO_OPTIONAL}}}
  tags:
    - {{name: extra, group: x}}
    - {{name: zone1, group: t1}}
    - {{name: zone2, group: t2}}
    - {{name: probe_ok, group: status, type: bool, true_values: [OK], false_values: ["NO"]}}
"""
        path = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, assets_yaml=asset, api_port=free_port())
        async with running_gateway(path) as rg:
            runtime = rg.gw.assets["probe"]
            assert await wait_until(lambda: runtime.status.polls >= 5)
            thermo.ok = False  # status "ER" is neither true nor false: probe_ok is bad
            assert await wait_until(lambda: any("tag(s) bad" in m for m in messages(caplog)))
            polls = runtime.status.polls
            assert await wait_until(lambda: runtime.status.polls >= polls + 10)  # more lines, zone1/2 still good
            thermo.ok = True
            assert await wait_until(lambda: any("good again" in m for m in messages(caplog)))
    lines = [m for m in messages(caplog) if "bad" in m or "good again" in m]
    assert lines[0] == "asset probe: 1 tag(s) bad (probe_ok): value text does not convert to the tag's type", lines
    assert lines[1:] == ["asset probe: all tags good again"], lines  # once, after probe_ok recovered


def garble_modbus(data: bytes, answer: int) -> bytes:
    """Every other answer gets function code 99, which pymodbus cannot decode (a converter with a bad
    firmware, a device answering another protocol)."""
    return data[:7] + b"\x63" + data[8:] if answer % 2 == 0 and len(data) > 7 else data


def garble_opcua(data: bytes, answer: int) -> bytes:
    """After the session is open (the first 20 chunks of a connection), each message chunk gets a message
    type no OPC UA stack knows."""
    return b"XYZ" + data[3:] if answer > 20 and data.startswith(b"MSG") else data


class CorruptingHop:
    """A TCP hop in front of a simulator that passes requests through and garbles answers with ``garble``
    (``garble(data, n)``, n counting the answer chunks of the connection from 1)."""

    def __init__(self, port: int, garble) -> None:
        self.target, self.garble, self.server = port, garble, None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src, dst, corrupt: bool) -> None:
            answers = 0
            try:
                while data := await src.read(65536):
                    if corrupt:
                        answers += 1
                        data = self.garble(data, answers)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    async def close(self) -> None:
        self.server.close()


def unsummarised_config(tmp_path, broker, assets: str):
    """A gateway whose state-change summaries come only hourly: every log line a test sees is a first one."""
    return gateway_config(tmp_path, mqtt_port=broker.port, assets_yaml=assets, api_port=free_port(),
                          gateway={"log_summary_interval": "1h"})  # fmt: skip


async def test_undecodable_modbus_answers_are_counted_not_traced(tmp_path, mqtt_broker, modbus_sim, caplog):
    caplog.set_level(logging.INFO)
    hop = CorruptingHop(modbus_sim.port, garble_modbus)
    port = await hop.start()
    assets = f"""\
    - id: press
      source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 50ms, timeout: 1s, retry_max: 1s}}
      tags:
        - {{name: strokes, address: 40003, type: uint32}}
    """
    path = unsummarised_config(tmp_path, mqtt_broker, assets)
    try:
        async with running_gateway(path) as rg:

            async def mismatched() -> int:
                detail = (await rg.api.get("/api/v1/assets/press")).json()
                return (detail["driver_counters"] or {}).get("mismatched_answers", 0)

            for _ in range(300):
                if await mismatched() >= 4:
                    break
                await asyncio.sleep(0.05)
            assert await mismatched() >= 4
            reconnects = rg.gw.assets["press"].status.reconnects
    finally:
        await hop.close()
    # the Modbus TCP client checks every answer: an undecodable one marks its request's tags bad and is
    # counted; the connection (its framing is intact) is kept
    assert reconnects == 0
    traced = [r.getMessage() for r in caplog.records if r.exc_info or r.name == "asyncio"]
    assert traced == []
    lines = messages(caplog)
    assert len([m for m in lines if "tag(s) bad" in m]) == 1, lines  # once; the rest is counted


async def test_undecodable_opcua_messages_are_counted_not_traced(tmp_path, mqtt_broker, opcua_sim, caplog):
    caplog.set_level(logging.INFO)
    hop = CorruptingHop(opcua_sim.port, garble_opcua)
    port = await hop.start()
    assets = f"""\
    - id: oven
      source: {{driver: opcua, endpoint: "opc.tcp://127.0.0.1:{port}/", poll: 50ms, timeout: 1s, retry_max: 1s}}
      tags:
        - {{name: zone1_temp, node: "ns=2;s=Oven1.Zone1.Temperature"}}
    """
    path = unsummarised_config(tmp_path, mqtt_broker, assets)
    try:
        async with running_gateway(path) as rg:
            runtime = rg.gw.assets["oven"]
            assert await wait_until(lambda: runtime.driver.counters()["bad_frames"] >= 3, timeout=30)
            assert await wait_until(lambda: runtime.status.reconnects >= 3, timeout=30)  # each one dropped it
            detail = (await rg.api.get("/api/v1/assets/oven")).json()
            assert detail["driver_counters"]["bad_frames"] >= 3
    finally:
        await hop.close()
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [m for m in messages(caplog, "asyncua.client.ua_client.UASocketProtocol") if "parsing" in m] == []
    assert len([m for m in messages(caplog) if "poll failed" in m]) == 1
