"""GET /metrics scraped from a running gateway (bundled Modbus simulator, real broker), parsed as Prometheus
text: names, labels, and values that follow what really happens."""

from __future__ import annotations

import asyncio
import time

from e2e.harness import running_gateway
from helpers import free_port, gateway_config, wait_until
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__

PRESS = """\
- id: press-3
  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 100ms, timeout: 500ms, retry_max: 1s}}
  tags:
    - {{name: pressure, address: 40001, type: float32, byte_order: CDAB, unit: bar}}
    - {{name: strokes, address: 40003, type: uint32}}
"""


class Scrape:
    """One parsed scrape: ``value(name, **labels)`` of a sample, ``families`` by name and type."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in self.families.values() for s in f.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [dict(k) for (n, k) in self.samples if n == name]


async def scrape(rg) -> Scrape:
    r = await rg.api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


async def test_metrics_follow_the_source_the_uplink_and_the_spool(tmp_path, mqtt_broker, modbus_sim):
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
                         assets_yaml=PRESS.format(port=modbus_sim.port))
    async with running_gateway(cfg) as rg:
        gw = rg.gw
        assert await wait_until(lambda: gw.ready and gw.assets["press-3"].status.polls >= 3)
        first = await scrape(rg)
        up, link = gw.uplink.name, gw.uplink.links[0].name
        src = {"asset": "press-3"}

        # names, types and labels
        assert first.families["iiot_gateway_source_polls"].type == "counter"
        assert first.families["iiot_gateway_source_up"].type == "gauge"
        assert first.families["iiot_gateway_build_info"].type == "gauge"  # an info metric in text format
        assert first.value("iiot_gateway_build_info", version=__version__, python=first.labelsets(
            "iiot_gateway_build_info")[0]["python"]) == 1.0
        assert first.labelsets("iiot_gateway_link_sent_bytes_total") == [{"uplink": up, "link": link}]
        assert first.labelsets("iiot_gateway_spool_bytes") == [{"uplink": up}]
        reasons = {ls["reason"] for ls in first.labelsets("iiot_gateway_spool_dropped_messages_total")}
        assert "full" in reasons
        assert all(n.startswith("iiot_gateway_") for n, _ in first.samples)

        # values are the real ones
        assert first.value("iiot_gateway_source_up", **src) == 1.0
        assert first.value("iiot_gateway_source_polls_total", **src) >= 3
        assert 0 < first.value("iiot_gateway_source_poll_duration_seconds", **src) < 5  # seconds, not ms
        assert first.value("iiot_gateway_uplink_connected", uplink=up) == 1.0
        assert first.value("iiot_gateway_link_connected", uplink=up, link=link) == 1.0
        assert first.value("iiot_gateway_spool_oldest_age_seconds", uplink=up) == 0.0
        sent = first.value("iiot_gateway_link_sent_bytes_total", uplink=up, link=link)
        msgs = first.value("iiot_gateway_link_messages_sent_total", uplink=up, link=link)

        # the event-loop lag task measures every 0.5 s: its gauge appears after the first measurement
        async with asyncio.timeout(10):
            while ("iiot_gateway_event_loop_lag_seconds", ()) not in (second := await scrape(rg)).samples:
                await asyncio.sleep(0.1)
        assert second.value("iiot_gateway_event_loop_lag_seconds") >= 0.0
        assert second.value("iiot_gateway_event_loop_lag_max_seconds") >= second.value(
            "iiot_gateway_event_loop_lag_seconds")
        # a blocked loop shows: block it for longer than the 0.5 s measuring sleep (a lower bound, not a timing)
        time.sleep(0.8)  # noqa: ASYNC251 -- the point is to block the gateway's event loop
        async with asyncio.timeout(10):
            while (await scrape(rg)).value("iiot_gateway_event_loop_lag_max_seconds") < 0.25:
                await asyncio.sleep(0.1)
        assert second.value("iiot_gateway_source_polls_total", **src) > first.value(
            "iiot_gateway_source_polls_total", **src)

        # bytes and messages go up as data is published
        assert await wait_until(lambda: gw.uplink.links[0].messages_sent > msgs + 2)
        third = await scrape(rg)
        assert third.value("iiot_gateway_link_sent_bytes_total", uplink=up, link=link) > sent
        assert third.value("iiot_gateway_link_messages_sent_total", uplink=up, link=link) > msgs

        # the PLC stops: up goes 0 and the failures are counted
        await modbus_sim.stop()
        assert await wait_until(lambda: gw.assets["press-3"].status.state == "disconnected")
        down = await scrape(rg)
        assert down.value("iiot_gateway_source_up", **src) == 0.0
        assert (down.value("iiot_gateway_source_poll_errors_total", **src)
                + down.value("iiot_gateway_source_connect_failures_total", **src)) >= 1

        # the broker stops: the uplink is disconnected and data waits in the spool
        await mqtt_broker.stop()
        await modbus_sim.start()
        assert await wait_until(lambda: not gw.uplink.connected)
        assert await wait_until(lambda: gw.delivery.stats()["messages"] > 0, timeout=15)
        outage = await scrape(rg)
        assert outage.value("iiot_gateway_uplink_connected", uplink=up) == 0.0
        assert outage.value("iiot_gateway_link_connected", uplink=up, link=link) == 0.0
        assert outage.value("iiot_gateway_spool_messages", uplink=up) > 0
        assert outage.value("iiot_gateway_spool_bytes", uplink=up) > 0
        assert outage.value("iiot_gateway_spool_oldest_age_seconds", uplink=up) > 0
        await mqtt_broker.start()


async def test_metrics_label_each_link_of_an_uplink(tmp_path, mqtt_broker, modbus_sim):
    # the first link leads nowhere (a closed port): the uplink fails over to the second, the real broker
    dead = free_port()
    links = [{"name": "ethernet", "host": "127.0.0.1", "port": dead},
             {"name": "cellular", "host": mqtt_broker.host, "port": mqtt_broker.port}]
    cfg = gateway_config(tmp_path, mqtt={"host": None, "links": links}, api_port=free_port(),
                         assets_yaml=PRESS.format(port=modbus_sim.port))
    async with running_gateway(cfg) as rg:
        cell = rg.gw.uplink.links[1]
        assert await wait_until(lambda: rg.gw.uplink.connected and cell.messages_sent > 2, timeout=20)
        m = await scrape(rg)
        eth, cel = {"uplink": "mqtt", "link": "ethernet"}, {"uplink": "mqtt", "link": "cellular"}
        assert m.value("iiot_gateway_link_connected", **cel) == 1.0
        assert m.value("iiot_gateway_link_connected", **eth) == 0.0
        assert m.value("iiot_gateway_link_active", **cel) == 1.0
        assert m.value("iiot_gateway_link_connect_failures_total", **eth) >= 1
        assert m.value("iiot_gateway_link_sent_bytes_total", **cel) > 0
        assert m.value("iiot_gateway_link_sent_bytes_total", **eth) == 0
