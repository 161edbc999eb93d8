"""The Sparkplug B edge node end to end: the real gateway against a real Mosquitto and the bundled Modbus
simulator, every payload decoded by Eclipse Tahu's JS codec (the ``tahu`` fixture), never by our own code."""

from __future__ import annotations

import asyncio
import json
import struct
import textwrap

import paho.mqtt.publish as paho_publish
from faultkit import InProcess
from helpers import TcpProxy, gateway_config, wait_until

GROUP, NODE = "Plant1", "fault-gw"
SP = f"spBv1.0/{GROUP}"

TAGS = """\
      - {name: pressure, address: "40001", type: float32, byte_order: CDAB, unit: bar}
      - {name: machine_state, address: "40011", type: uint16}
      - {name: i16, address: "40101", type: int16, writable: true}
      - {name: recipe, address: "40020", type: string, length: 8}
"""


def config(tmp_path, modbus_port: int, north: str) -> object:
    """A config with the Modbus press and ``north``: the YAML of its one uplink section (``mqtt:`` or ``uplinks:``)."""
    section, _, body = north.partition(":\n")
    press = (
        f"- id: press\n  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {modbus_port}, poll: 100ms, "
        f"timeout: 500ms, retry_max: 1s}}\n  tags:\n"
    ) + textwrap.indent(textwrap.dedent(TAGS), "    ")
    return gateway_config(
        tmp_path, gateway={"id": NODE, "namespace": "acme/sp/line1"}, assets_yaml=press, **{"mqtt": None, section: body}
    )


def sparkplug_uplink(port: int, *, extra: str = "", links: str | None = None) -> str:
    route = f"  host: 127.0.0.1\n  port: {port}\n" if links is None else links
    return (
        f"mqtt:\n  format: sparkplug\n  group_id: {GROUP}\n  publish_interval: 200ms\n  heartbeat: 1s\n"
        f"  reconnect_max: 1s\n  keepalive: 5s\n{route}{extra}"
    )


class Decoded:
    """The Sparkplug messages a subscriber got, decoded by Tahu: (topic kind, device, decoded payload)."""

    def __init__(self, sub, tahu) -> None:
        msgs = [
            m for m in sub.messages if m.topic.startswith(SP + "/") and m.topic.split("/")[2] not in ("NCMD", "DCMD")
        ]
        self.items = []
        for m, d in zip(msgs, tahu.decode(*[m.payload for m in msgs]) if msgs else []):
            parts = m.topic.split("/")
            self.items.append((parts[2], parts[4] if len(parts) > 4 else None, d))

    def of(self, kind: str) -> list[dict]:
        return [d for k, _, d in self.items if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.items]


def metric(payload: dict, name: str) -> dict:
    return next(m for m in payload["metrics"] if m.get("name") == name)


def seq_of(payload: dict) -> int:
    return int(payload["seq"])


def count(sub, kind: str) -> int:
    return sum(1 for m in sub.messages if m.topic.startswith(f"{SP}/{kind}/"))


async def test_births_before_data_seq_aliases_and_bdseq_across_restarts(
    tmp_path, modbus_sim, mqtt_broker, mqtt_subscriber, tahu
):
    sub = await mqtt_subscriber("spBv1.0/#")
    uns = await mqtt_subscriber("acme/sp/line1/+/data")
    # Sparkplug and JSON at once, on two uplinks (here to one broker)
    two = (
        "uplinks:\n  - name: sp\n"
        + textwrap.indent(sparkplug_uplink(mqtt_broker.port).split("\n", 1)[1], "  ")
        + f"  - name: uns\n    host: 127.0.0.1\n    port: {mqtt_broker.port}\n"
    )
    path = config(tmp_path, modbus_sim.port, two)
    for run in range(2):
        async with InProcess(path) as gw:
            assert await wait_until(lambda: count(sub, "DDATA") >= 6 * (run + 1), timeout=20)
            assert not gw.uplink.stats["links"]["default"]["last_error"]
            assert await wait_until(lambda: len(uns.messages) >= 2 * (run + 1), timeout=10)
        assert await wait_until(lambda: count(sub, "NDEATH") == run + 1, timeout=10)  # said before DISCONNECT
    got = Decoded(sub, tahu)
    births, deaths = got.of("NBIRTH"), got.of("NDEATH")
    assert len(births) == 2 and len(deaths) == 2
    bd = [int(metric(p, "bdSeq")["value"]) for p in births]
    assert bd[1] == (bd[0] + 1) % 256  # +1 per connect, kept across the restart in state_dir
    assert [int(metric(p, "bdSeq")["value"]) for p in deaths] == bd  # the death names the session it ends
    assert metric(births[0], "Node Control/Rebirth")["value"] is False
    # each session: NBIRTH (seq 0), DBIRTH, then data; seq counts every message but NDEATH, wrapping at 256
    first = got.kinds().index("NBIRTH")
    session = [(k, d) for k, _, d in got.items[first:] if k != "NDEATH"]
    second = [k for k, _ in session].index("NBIRTH", 1)
    for part in (session[:second], session[second:]):
        assert [k for k, _ in part[:2]] == ["NBIRTH", "DBIRTH"]
        seqs = [seq_of(d) for _, d in part]
        assert seqs == [i % 256 for i in range(len(seqs))]
    # aliases: names and datatypes in the birth, DDATA by alias only, every alias known from the birth
    dbirth = got.of("DBIRTH")[0]
    by_alias = {int(m["alias"]): m for m in dbirth["metrics"]}
    assert {m["name"] for m in by_alias.values()} >= {"pressure", "machine_state", "i16", "recipe"}
    assert metric(dbirth, "i16")["value"] == -12345 and metric(dbirth, "i16")["type"] == "Int16"
    assert metric(dbirth, "recipe")["value"] == "RCP-0042"
    assert metric(dbirth, "pressure")["properties"]["engUnit"]["value"] == "bar"
    for data in got.of("DDATA"):
        for m in data["metrics"]:
            assert "name" not in m or not m["name"]
            assert int(m["alias"]) in by_alias


async def test_rebirth_on_ncmd_and_dcmd_write_round_trip(tmp_path, modbus_sim, mqtt_broker, mqtt_subscriber, tahu):
    sub = await mqtt_subscriber("spBv1.0/#")
    path = config(tmp_path, modbus_sim.port, sparkplug_uplink(mqtt_broker.port))
    async with InProcess(path):
        assert await wait_until(lambda: count(sub, "DDATA") >= 3, timeout=20)
        [rebirth, write] = tahu.encode(
            {"metrics": [{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]},
            {"metrics": [{"name": "i16", "type": "Int16", "value": -77}]},
        )
        await asyncio.to_thread(
            paho_publish.single, f"{SP}/NCMD/{NODE}", rebirth, hostname=mqtt_broker.host, port=mqtt_broker.port
        )
        assert await wait_until(lambda: count(sub, "NBIRTH") == 2, timeout=10)
        await asyncio.to_thread(
            paho_publish.single, f"{SP}/DCMD/{NODE}/press", write, hostname=mqtt_broker.host, port=mqtt_broker.port
        )
        assert await wait_until(
            lambda: struct.unpack(">h", struct.pack(">H", *modbus_sim.read_registers("hr", 100, 1))) == (-77,),
            timeout=10,
        )

        def reported() -> bool:  # the read-back value in a later DDATA, by the alias the birth gave i16
            got = Decoded(sub, tahu)
            alias = int(metric(got.of("DBIRTH")[-1], "i16")["alias"])
            return any(int(m["alias"]) == alias and m["value"] == -77 for d in got.of("DDATA") for m in d["metrics"])

        assert await wait_until(reported, timeout=10, interval=0.5)
    got = Decoded(sub, tahu)
    second = got.kinds().index("NBIRTH", got.kinds().index("NBIRTH") + 1)
    assert seq_of(got.items[second][2]) == 0 and got.kinds()[second + 1] == "DBIRTH"


async def test_primary_host_state_gates_births_and_the_outage_is_replayed_as_history(
    tmp_path, modbus_sim, mqtt_broker, mqtt_subscriber, tahu
):
    first = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    second = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await first.accept()
    await second.accept()
    links = (
        f"  failback_after: 1h\n  links:\n    - {{name: a, host: 127.0.0.1, port: {first.port}}}\n"
        f"    - {{name: b, host: 127.0.0.1, port: {second.port}}}\n"
    )
    path = config(tmp_path, modbus_sim.port, sparkplug_uplink(0, links=links, extra="  primary_host_id: scada\n"))
    sub = await mqtt_subscriber("spBv1.0/#")
    state = "spBv1.0/STATE/scada"

    async def host_state(payload: dict | None) -> None:
        """The primary host's retained STATE (None: cleared)."""
        body = b"" if payload is None else json.dumps(payload)
        await asyncio.to_thread(paho_publish.single, state, body, retain=True, qos=1, hostname=mqtt_broker.host,
                                port=mqtt_broker.port)  # fmt: skip

    try:
        async with InProcess(path) as gw:
            up = gw.uplink
            assert await wait_until(lambda: up.connected and gw.delivery.backlog.messages >= 5, timeout=20)
            assert count(sub, "NBIRTH") == 0 and count(sub, "DDATA") == 0  # no birth, no data: host not online
            held = gw.delivery.backlog.messages
            await host_state({"online": True, "timestamp": 1})
            assert await wait_until(
                lambda: gw.delivery.backlog.messages == 0 and count(sub, "DDATA") > held, timeout=20
            )
            assert up.active_link.name == "a"
            await host_state({"online": False, "timestamp": 2})
            # the host went away: the node leaves this connection (the broker says NDEATH) and tries link b
            assert await wait_until(
                lambda: count(sub, "NDEATH") == 1 and up.active_link.name == "b" and up.connected, timeout=20
            )
            assert await wait_until(lambda: gw.delivery.backlog.messages >= 3, timeout=10)  # held again
    finally:
        await first.close()
        await second.close()
        await host_state(None)
    got = Decoded(sub, tahu)
    kinds = got.kinds()
    assert kinds[:2] == ["NBIRTH", "DBIRTH"]  # births before any data, replayed or live
    data = got.of("DDATA")
    historical = [d for d in data if all(m.get("isHistorical") for m in d["metrics"])]
    assert len(historical) >= held  # what was made while the host was offline came as history, after the births
    assert [seq_of(d) for _, _, d in got.items[: kinds.index("NDEATH")]] == list(range(kinds.index("NDEATH")))
    stamps = [int(d["timestamp"]) for d in historical]
    assert stamps == sorted(stamps)


async def test_device_death_and_rebirth_when_the_plc_goes_and_returns(
    tmp_path, modbus_sim, mqtt_broker, mqtt_subscriber, tahu
):
    sub = await mqtt_subscriber("spBv1.0/#")
    path = config(tmp_path, modbus_sim.port, sparkplug_uplink(mqtt_broker.port))
    async with InProcess(path) as gw:
        assert await wait_until(lambda: count(sub, "DDATA") >= 2, timeout=20)
        await modbus_sim.stop()
        assert await wait_until(lambda: count(sub, "DDEATH") == 1, timeout=15)
        await modbus_sim.start()
        assert await wait_until(lambda: count(sub, "DBIRTH") == 2, timeout=20)
        assert gw.assets["press"].status.state == "connected"
        kinds = [k for k in Decoded(sub, tahu).kinds() if k in ("DBIRTH", "DDEATH")]
    assert kinds == ["DBIRTH", "DDEATH", "DBIRTH"]
