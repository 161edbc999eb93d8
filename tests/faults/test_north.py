"""The north side on real parts: several uplinks, links with failover and failback, metered profiles, the byte
budget, the retained ``last`` message. Real Mosquitto brokers on free ports, links simulated with the TCP
proxy, the bundled Modbus simulator as the device."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from faultkit import NS, InProcess, plc_assets
from helpers import (
    EmbeddedBrokerHandle,
    MosquittoBroker,
    TcpProxy,
    gateway_config,
    mosquitto_binary,
    wait_until,
)

from gateway.encoders import decode
from gateway.encoders.json import expand


@pytest.fixture
async def cloud_broker(tmp_path):
    """A second broker (the "cloud"), of the same kind as ``mqtt_broker``."""
    if mosquitto_binary() is not None and os.environ.get("IIOT_TEST_BROKER") != "embedded":
        (tmp_path / "cloud").mkdir()
        broker = MosquittoBroker(tmp_path / "cloud")
    else:
        broker = EmbeddedBrokerHandle()
    await broker.start()
    yield broker
    await broker.stop()


def data_of(sub) -> list[dict]:
    """Every data message a subscriber got (plain or compressed), compact ones expanded, with ``_topic``."""
    out = []
    for m in sub.messages:
        if m.topic.startswith(NS + "/") and "/data" in m.topic:
            out.append({**expand(decode(m.payload, m.topic)), "_topic": m.topic, "_raw": m.payload})
    return out


def seqs(messages: list[dict]) -> set[int]:
    return {m["seq"] for m in messages}


def gap_free(numbers: set[int]) -> bool:
    return bool(numbers) and numbers == set(range(1, max(numbers) + 1))


def link_stats(gw, uplink: str = "mqtt") -> dict:
    return gw.gateway_status()["uplinks"][uplink]["links"]


async def test_two_uplinks_a_dead_cloud_never_holds_up_the_plant(tmp_path, modbus_sim, mqtt_broker, cloud_broker,
                                                                 mqtt_subscriber, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    cloud_link = TcpProxy(cloud_broker.host, cloud_broker.port)  # the cloud is unreachable at first
    assets = plc_assets([("press", modbus_sim.port)], tags=8, poll="100ms", mode="rbe")
    cfg = gateway_config(tmp_path, assets_yaml=assets, mqtt=None, uplinks=f"""\
          - name: plant
            host: 127.0.0.1
            port: {mqtt_broker.port}
            publish_interval: 200ms
            heartbeat: 200ms
            reconnect_max: 1s
          - name: cloud
            host: 127.0.0.1
            port: {cloud_link.port}
            publish_interval: 1s
            heartbeat: 1s
            payload: compact
            reconnect_max: 1s
        """)
    plant = await mqtt_subscriber(f"{NS}/+/data/#")
    cloud = await mqtt_subscriber(f"{NS}/+/data/#", broker=cloud_broker)
    try:
        async with InProcess(cfg) as gw:
            assert await wait_until(lambda: len(data_of(plant)) >= 15, timeout=20)
            # the plant uplink is unaffected by the dead cloud; the cloud's messages wait in its own spool
            cloud_north = gw.norths[1]
            assert not cloud_north.uplink.connected
            assert await wait_until(lambda: cloud_north.delivery.backlog.messages >= 3, timeout=10)
            assert (tmp_path / "state" / "spool" / "plant").is_dir()
            assert (tmp_path / "state" / "spool" / "cloud" / "backlog").is_dir()
            assert gw.norths[0].delivery.backlog.messages == 0
            spooled = cloud_north.delivery.backlog.messages
            await cloud_link.accept()
            assert await wait_until(lambda: cloud_north.delivery.backlog.messages == 0 and len(data_of(cloud)) > spooled,
                                    timeout=20)
        plant_msgs, cloud_msgs = data_of(plant), data_of(cloud)
    finally:
        await cloud_link.close()
    # each uplink numbers its own messages: both gap-free, the plant's never marked as replayed
    assert gap_free(seqs(plant_msgs)) and gap_free(seqs(cloud_msgs))
    assert not any(m.get("replay") for m in plant_msgs)
    assert sum(1 for m in cloud_msgs if m.get("replay")) >= spooled
    # each has its own profile: the plant gets full objects, the cloud compact bare values
    # the replay is logged when it starts (with the count) and when it is done; the plant's spool never replays
    logs = [r.getMessage() for r in caplog.records]
    assert any("spool/cloud" in x and "replaying" in x for x in logs), logs
    assert any("spool/cloud" in x and "replay done" in x for x in logs), logs
    assert not any("spool/plant" in x and "replay" in x for x in logs), logs
    assert all(isinstance(e, dict) for m in plant_msgs for e in decode(m["_raw"], m["_topic"])["tags"].values())
    objects = [e for m in cloud_msgs for e in decode(m["_raw"], m["_topic"])["tags"].values() if isinstance(e, dict)]
    assert not objects, (objects[:3], cloud_msgs[:2])


async def test_failover_to_cellular_and_failback_lose_nothing(tmp_path, modbus_sim, mqtt_broker, mqtt_subscriber):
    ethernet = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    cellular = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await ethernet.accept()
    await cellular.accept()
    assets = plc_assets([("press", modbus_sim.port)], tags=8, poll="100ms", mode="rbe")
    cfg = gateway_config(tmp_path, assets_yaml=assets, mqtt=f"""\
          publish_interval: 200ms
          heartbeat: 200ms
          reconnect_max: 1s
          keepalive: 5s
          failback_after: 2s
          links:
            - name: ethernet
              host: 127.0.0.1
              port: {ethernet.port}
            - name: cellular
              host: 127.0.0.1
              port: {cellular.port}
              metered: true
              publish_interval: 1s
              payload: compact
              compression: zstd
        """)
    sub = await mqtt_subscriber(f"{NS}/+/data/#")
    try:
        async with InProcess(cfg) as gw:
            up = gw.uplink
            assert await wait_until(lambda: up.connected and len(data_of(sub)) >= 5, timeout=20)
            assert up.active_link.name == "ethernet"
            await ethernet.refuse()
            ethernet.cut()  # the Ethernet link dies: the uplink goes on over cellular
            assert await wait_until(lambda: any(m["_topic"].endswith("/data/zstd") for m in data_of(sub)), timeout=20)
            assert up.active_link.name == "cellular" and up.connected
            links = link_stats(gw)
            assert links["cellular"]["active"] and links["cellular"]["bytes_sent"] > 0
            assert links["cellular"]["metered"] and links["cellular"]["payload"] == "compact"
            before_failback = len(data_of(sub))
            await ethernet.accept()  # Ethernet is back: after failback_after of good probes, the uplink returns
            assert await wait_until(lambda: up.active_link.name == "ethernet" and up.connected, timeout=20)
            assert await wait_until(lambda: any(m["_topic"].endswith("/data") for m in data_of(sub)[before_failback:]),
                                    timeout=10)
            assert gw.gateway_status()["uplinks"]["mqtt"]["link_switches"] == 1
            eth_bytes = link_stats(gw)["ethernet"]["bytes_sent"]
            assert eth_bytes > 0
        msgs = data_of(sub)
    finally:
        await ethernet.close()
        await cellular.close()
    # every message numbered before the stop arrived, over one link or the other (duplicates allowed, seq tells)
    assert gap_free(seqs(msgs))
    cellular_msgs = [m for m in msgs if m["_topic"].endswith("/zstd")]
    assert cellular_msgs and all(not isinstance(e, dict)  # the metered profile: compact (and zstd)
                                 for m in cellular_msgs for e in decode(m["_raw"], m["_topic"])["tags"].values())
    # replay order is kept: the replayed messages arrive in seq order
    replayed = [m["seq"] for m in msgs if m.get("replay")]
    assert replayed == sorted(replayed)


async def test_byte_budget_spools_data_keeps_statuses_and_a_better_link_takes_over(tmp_path, modbus_sim, mqtt_broker,
                                                                                  mqtt_subscriber):
    ethernet = TcpProxy(mqtt_broker.host, mqtt_broker.port)  # down at start
    cellular = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await cellular.accept()
    assets = plc_assets([("press", modbus_sim.port)], tags=8, poll="100ms")
    cfg = gateway_config(tmp_path, assets_yaml=assets, mqtt=f"""\
          publish_interval: 200ms
          reconnect_max: 1s
          failback_after: 1s
          links:
            - name: ethernet
              host: 127.0.0.1
              port: {ethernet.port}
            - name: cellular
              host: 127.0.0.1
              port: {cellular.port}
              metered: true
              max_bytes_per_day: 6000
              metrics_interval: 1s
        """)
    sub = await mqtt_subscriber(f"{NS}/#")
    try:
        async with InProcess(cfg) as gw:
            up = gw.uplink
            assert await wait_until(lambda: up.connected and up.active_link.name == "cellular", timeout=20)
            assert await wait_until(lambda: link_stats(gw)["cellular"]["budget_exhausted"], timeout=20)
            cell = link_stats(gw)["cellular"]
            assert cell["bytes_today"] >= 6000 and cell["budget_left"] == 0
            n_data = len(data_of(sub))
            metrics = sum(1 for m in sub.messages if m.topic.endswith("/metrics"))
            # data goes to the spool (counted), statuses and metrics still go out
            assert await wait_until(lambda: gw.delivery.backlog.messages >= 5, timeout=10)
            assert await wait_until(lambda: sum(1 for m in sub.messages if m.topic.endswith("/metrics")) > metrics + 1,
                                    timeout=10)
            assert len(data_of(sub)) <= n_data + 1  # at most the one message whose bytes spent the budget
            assert link_stats(gw)["cellular"]["budget_spooled"] > 0
            assert link_stats(gw)["cellular"]["budget_exhausted"]
            await ethernet.accept()  # the cheaper link returns: data, and the spool's replay, go over it
            assert await wait_until(lambda: up.active_link.name == "ethernet" and up.connected, timeout=20)
            assert await wait_until(lambda: gw.delivery.backlog.messages == 0, timeout=20)
        msgs = data_of(sub)
    finally:
        await ethernet.close()
        await cellular.close()
    assert gap_free(seqs(msgs))
    # the spent budget survives a restart: it is kept in the uplink's state directory
    saved = (tmp_path / "state" / "spool" / "mqtt" / "budget-cellular.json").read_text()
    assert '"bytes":' in saved and int(saved.split('"bytes":')[1].strip(" }")) >= 6000


async def test_late_joiner_gets_every_tag_from_the_retained_last(tmp_path, modbus_sim, mqtt_broker, mqtt_subscriber):
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port,
                         assets_yaml=plc_assets([("press", modbus_sim.port)], tags=12, mode="rbe"))
    async with InProcess(cfg) as gw:
        assert await wait_until(lambda: gw.uplink.connected and gw.assets["press"].ring.head.min() > 3, timeout=20)
        gw.publisher.publish_last()  # what the timer does every last_interval
        late = await mqtt_subscriber(f"{NS}/press/last")
        last = await late.next()
    assert last.retain
    body = last.json()
    assert body["asset"] == "press" and set(body["tags"]) == {f"t{i:03d}" for i in range(12)}
    assert all(set(e) == {"ts", "v", "q"} and isinstance(e["v"], int) for e in body["tags"].values())


async def test_bind_interface_routes_the_connection_or_says_why_not(mqtt_broker):
    from gateway.config.models import MqttSection
    from gateway.uplink import MqttUplink

    good = MqttSection(links=[{"name": "lo", "host": mqtt_broker.host, "port": mqtt_broker.port,
                               "bind_interface": "lo", "bind_address": "127.0.0.1"}])
    up = MqttUplink(good, client_id="bind-test", status_topic="t/bind/status")
    bad = MqttSection(links=[{"name": "wwan", "host": mqtt_broker.host, "port": mqtt_broker.port,
                              "bind_interface": "nosuchif0"}], reconnect_max=1)
    down = MqttUplink(bad, client_id="bind-test-2", status_topic="t/bind2/status")
    import asyncio

    tasks = [asyncio.create_task(up.run()), asyncio.create_task(down.run())]
    try:
        assert await up.wait_connected(10)
        assert await wait_until(lambda: down.stats["connect_failures"] >= 1, timeout=10)
        assert "nosuchif0" in down.stats["links"]["wwan"]["last_error"]
        assert not down.connected
    finally:
        await up.stop()
        await down.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_north_config_errors_name_the_file_line_and_field(tmp_path: Path):
    from gateway.config import ConfigError, load_config

    def errors(**north: str) -> tuple[list[str], list[str]]:
        path = gateway_config(tmp_path, assets_yaml=plc_assets([("press", 502)]), **{"mqtt": None, **north})
        with pytest.raises(ConfigError) as e:
            load_config(path)
        return [f"{i.line}: {i.path}: {i.message}" for i in e.value.errors], path.read_text().splitlines()

    def line(lines: list[str], text: str) -> int:
        return next(n for n, x in enumerate(lines, 1) if x.strip() == text)

    both, lines = errors(mqtt="host: a", uplinks="- name: b\n  host: b")
    assert any(x.startswith(f"{line(lines, 'uplinks:')}: uplinks:") and "not both" in x for x in both), both
    two_forms, lines = errors(mqtt="host: a\nlinks:\n  - {name: x, host: b}")
    assert any(x.startswith(f"{line(lines, 'host: a')}: mqtt.host:") and "not both" in x for x in two_forms), two_forms
    dup, _ = errors(uplinks="- name: a\n  host: a\n- name: a\n  host: b")
    assert any("uplinks" in x and "duplicate uplink name 'a'" in x for x in dup), dup
    dup_link, _ = errors(mqtt="links:\n  - {name: x, host: a}\n  - {name: x, host: b}")
    assert any("mqtt.links" in x and "duplicate link name 'x'" in x for x in dup_link), dup_link
    sparkplug, _ = errors(mqtt="host: a\nformat: sparkplug")
    assert any("needs group_id" in x for x in sparkplug), sparkplug
    zipped, _ = errors(mqtt="host: a\nformat: sparkplug\ngroup_id: g\ncompression: zstd")
    assert any("uncompressed" in x for x in zipped), zipped
    none, _ = errors()
    assert any("mqtt: or uplinks:" in x for x in none), none
