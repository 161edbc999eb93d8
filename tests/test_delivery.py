"""Delivery (gateway/delivery.py) on real parts: the real spool in tmp_path, the real MqttUplink, a real broker
(Mosquitto where installed) and the TCP proxy of tests/helpers.py between them.

The proxy is the one stand-in: it makes the outages a real broker cannot (refused connects, a link cut under
the gateway, a half-open link that swallows what the gateway sends) while the test's subscriber stays
connected to the broker directly and sees exactly what reached it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from helpers import TcpProxy, wait_until

from gateway.config.models import MqttSection, SpoolSection
from gateway.delivery import Delivery
from gateway.uplink import MqttUplink

TOPIC = "t/data"
SAMPLES = 3  # samples per test message


def marking_wire(topic: str, body: bytes, replay: bool) -> tuple[str, bytes]:
    """A ``wire`` that prefixes replayed payloads with ``R:`` so the subscriber can tell the paths apart."""
    return topic, (b"R:" + body) if replay else body


def parsed(messages) -> list[tuple[int, bool]]:
    """``(seq, replayed)`` of each data message received, in arrival order."""
    out = []
    for m in messages:
        if m.topic != TOPIC:
            continue
        text = m.payload.decode()
        replayed = text.startswith("R:")
        out.append((int(text.removeprefix("R:").split(" ", 1)[0]), replayed))
    return out


class Rig:
    """One uplink's north side as the daemon wires it: MqttUplink -> Delivery, run and stopped in the engine's
    order (delivery opened first, closed before the uplink stops)."""

    def __init__(
        self,
        path: Path,
        proxy: TcpProxy,
        *,
        spool: SpoolSection | None = None,
        ack_timeout: float = 5.0,
        max_queued: int = 10_000,
        max_inflight: int = 64,
        flush_timeout: float = 2.0,
    ) -> None:
        self.proxy = proxy
        cfg = MqttSection(host=proxy.host, port=proxy.port, keepalive=5, reconnect_max=1)
        self.uplink = MqttUplink(
            cfg,
            client_id="gw-delivery-test",
            status_topic=None,
            on_connection_change=lambda up: self.delivery.link_changed(up),
        )
        self.delivery = Delivery(
            self.uplink,
            spool or SpoolSection(),
            path=path,
            ack_timeout=ack_timeout,
            max_queued=max_queued,
            wire=marking_wire,
            max_inflight=max_inflight,
            flush_timeout=flush_timeout,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = False

    async def open(self) -> Rig:
        await self.delivery.open()
        self._tasks.append(asyncio.create_task(self.delivery.run()))
        return self

    async def connect(self, *, wait: bool = True) -> None:
        self._tasks.append(asyncio.create_task(self.uplink.run()))
        if wait:
            assert await self.uplink.wait_connected(10)

    def submit(self, n: int, *, size: int = 0, qos: int = 1) -> list[int]:
        """Hand ``n`` messages over as a publisher does (numbered first); their seqs."""
        seqs = []
        for _ in range(n):
            seq = self.delivery.next_seq()
            body = f"{seq} ".encode() + b"x" * size
            self.delivery.submit(seq, TOPIC, body, samples=SAMPLES, qos=qos)
            seqs.append(seq)
        return seqs

    def stats(self) -> dict:
        return self.delivery.stats()

    async def settle(self) -> None:
        """Wait until the delivery's file work is done (spooled counts are final)."""
        await self.delivery._drain_io()  # no public "flush": the counters are read after the I/O thread ran

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.delivery.close()
        delivery_task = self._tasks[0]
        delivery_task.cancel()
        await asyncio.gather(delivery_task, return_exceptions=True)
        await self.uplink.stop()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)


@pytest.fixture
async def proxy(mqtt_broker):
    p = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await p.accept()
    yield p
    await p.close()


@pytest.fixture
async def rigs(tmp_path):
    """Factory of rigs; every rig is stopped at teardown (in reverse order)."""
    made: list[Rig] = []

    async def make(proxy: TcpProxy, **kw) -> Rig:
        rig = await Rig(tmp_path / "spool", proxy, **kw).open()
        made.append(rig)
        return rig

    yield make
    for rig in reversed(made):
        await rig.stop()


async def outage(proxy: TcpProxy, rig: Rig) -> None:
    """The broker becomes unreachable for the gateway (connects refused, the open link cut)."""
    await proxy.refuse()
    proxy.cut()
    assert await wait_until(lambda: not rig.uplink.connected)


# ------------------------------------------------------------------------------------------- live path


async def test_live_messages_arrive_in_order_once_each_and_never_touch_the_disk(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy)
    await rig.connect()
    seqs = rig.submit(200)
    await sub.collect(200)
    assert parsed(sub.messages) == [(s, False) for s in seqs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 200
    assert await wait_until(lambda: rig.stats()["inflight"] == 0)
    st = rig.stats()
    assert (st["delivered"], st["replayed"], st["messages"], st["ram_queued"], st["dropped_messages"]) == (
        200,
        0,
        0,
        0,
        0,
    )
    assert rig.delivery.backlog.end == 0  # outage durability: nothing was written while the link kept up


async def test_qos0_messages_count_as_delivered_when_sent(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy)
    await rig.connect()
    seqs = rig.submit(10, qos=0)
    st = rig.stats()
    assert (st["delivered"], st["inflight"]) == (10, 0)  # nothing will acknowledge them: not waited for
    await sub.collect(10)
    assert [s for s, _ in parsed(sub.messages)] == seqs


async def test_messages_before_the_first_connect_wait_in_ram_and_go_out_live(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy)
    seqs = rig.submit(5)
    await rig.settle()
    st = rig.stats()
    assert (st["ram_queued"], st["messages"]) == (5, 0)
    assert rig.delivery.backlog.end == 0
    await rig.connect()
    await sub.collect(5)
    assert parsed(sub.messages) == [(s, False) for s in seqs]  # sent as live data, not as a replay


async def test_a_failed_first_connect_moves_the_waiting_messages_to_the_backlog(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    await proxy.refuse()
    rig = await rigs(proxy)
    seqs = rig.submit(5)
    await rig.connect(wait=False)
    assert await wait_until(lambda: rig.uplink.settled)
    await rig.settle()
    st = rig.stats()
    assert (st["ram_queued"], st["messages"], st["samples"]) == (0, 5, 5 * SAMPLES)
    await proxy.accept()
    await sub.collect(5)
    assert parsed(sub.messages) == [(s, True) for s in seqs]


# ---------------------------------------------------------------------------------------- outage and replay


async def test_an_outage_is_spooled_and_replayed_in_order_once_each(proxy, rigs, mqtt_subscriber, caplog):
    caplog.set_level(logging.INFO, logger="gateway.delivery")
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, spool=SpoolSection(replay_rate=1000))
    await rig.connect()
    before = rig.submit(5)
    await sub.collect(5)
    assert await wait_until(lambda: rig.stats()["delivered"] == 5)  # else they are spooled again (at least once)
    await outage(proxy, rig)
    during = rig.submit(40)
    await rig.settle()
    st = rig.stats()
    assert (st["messages"], st["samples"], st["ram_queued"], st["inflight"]) == (40, 40 * SAMPLES, 0, 0)
    assert st["oldest_age_s"] is not None
    await proxy.accept()
    await sub.collect(45)
    assert parsed(sub.messages) == [(s, False) for s in before] + [(s, True) for s in during]
    assert await wait_until(lambda: rig.stats()["messages"] == 0)
    st = rig.stats()
    assert (st["delivered"], st["replayed"], st["bytes"], st["samples"], st["oldest_age_s"]) == (45, 40, 0, 0, None)
    text = caplog.text
    assert "replaying 40 message(s) (120 samples)" in text
    assert await wait_until(lambda: "replay done, 40 message(s)" in caplog.text)


async def test_live_data_keeps_flowing_while_the_backlog_is_replayed(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, spool=SpoolSection(replay_rate=5))
    await rig.connect()
    await outage(proxy, rig)
    spooled = rig.submit(20)
    await rig.settle()
    await proxy.accept()
    assert await rig.uplink.wait_connected(10)
    await sub.next(lambda m: m.payload.startswith(b"R:"))  # the replay has begun
    live = rig.submit(3)
    got = await sub.collect(3, lambda m: not m.payload.startswith(b"R:"))
    assert [s for s, _ in parsed(got)] == live
    assert rig.stats()["messages"] > 0  # live data did not wait for the (slow) replay to end
    await sub.collect(23)
    assert [s for s, r in parsed(sub.messages) if r] == spooled


async def test_a_link_that_stops_acknowledging_is_closed_and_nothing_is_lost(proxy, rigs, mqtt_subscriber, caplog):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, ack_timeout=1.0)
    await rig.connect()
    proxy.blackhole()  # half-open: the gateway's packets vanish, its socket looks fine
    seqs = rig.submit(10)
    assert rig.stats()["inflight"] == 10
    assert await wait_until(lambda: rig.stats()["messages"] == 10)  # PUBACK late: the link was dropped, spooled
    assert rig.stats()["inflight"] == 0
    assert "no PUBACK" in caplog.text
    proxy.blackhole(False)
    await sub.collect(10)
    assert parsed(sub.messages) == [(s, True) for s in seqs]
    assert await wait_until(lambda: rig.stats()["replayed"] == 10)
    assert rig.stats()["delivered"] == 10


async def test_ram_overflow_on_a_slow_link_keeps_every_message_in_seq_order(proxy, rigs, mqtt_subscriber, caplog):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, ack_timeout=1.0, max_inflight=2, max_queued=3)
    await rig.connect()
    proxy.blackhole()
    seqs = rig.submit(10)
    await rig.settle()
    st = rig.stats()
    # RAM holds at most mqtt.max_queued; an overflow sends RAM to the disk with it, in flight or not
    assert st["ram_queued"] <= 3 and st["messages"] + st["ram_queued"] == 10
    assert await wait_until(lambda: "no PUBACK" in caplog.text)  # the link was dropped
    assert await wait_until(lambda: rig.stats()["messages"] == 10 and rig.stats()["inflight"] == 0)
    proxy.blackhole(False)
    await sub.collect(10)
    assert [s for s, _ in parsed(sub.messages)] == seqs  # the backlog is replayed oldest first


async def test_ram_overflow_on_a_link_that_keeps_up_sends_every_message_once(proxy, rigs, mqtt_subscriber):
    """An overflow copies the messages in flight to disk too; their PUBACKs come (in milliseconds) before the
    slow replay (5/s, behind an older message) reaches the copies, which must then be dropped, not sent."""
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, max_inflight=2, max_queued=3, spool=SpoolSection(replay_rate=5))
    await rig.connect()
    rig.uplink.hold = True
    older = rig.submit(1)  # on disk first: the replay starts with it
    await rig.settle()
    rig.uplink.hold = False
    burst = rig.submit(10)  # 2 in flight, 3 in RAM, then the overflow: all of them to disk, in seq order
    in_flight = burst[:2]
    assert await wait_until(lambda: rig.stats()["delivered"] == 11 and rig.stats()["messages"] == 0, timeout=20)
    end = rig.submit(1)[0]  # the broker forwards in order: once this one is here, any duplicate would be too
    await sub.next(lambda m: parsed([m]) == [(end, False)])
    got = [(s, r) for s, r in parsed(sub.messages) if s != end]
    assert sorted(s for s, _ in got) == older + burst  # every message, none twice
    assert [(s, r) for s, r in got if s in in_flight] == [(s, False) for s in in_flight]  # live only, no copy
    assert [s for s, r in got if r] == sorted(s for s, r in got if r)  # the replayed ones oldest first
    assert (older[0], True) in got and any(r for s, r in got if s in burst)  # the overflow did go through the disk


async def test_closing_the_data_gate_with_messages_in_flight_keeps_the_backlog_in_seq_order(
    proxy, rigs, mqtt_subscriber
):
    """The gate closes (a byte budget spent) while messages are in flight on a link that then turns out dead:
    the in-flight ones go to disk no later than the first held message does, so the held ones cannot get
    ahead of them (before the fix they were appended at the link's loss, after the held ones)."""
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, ack_timeout=1.0, spool=SpoolSection(replay_rate=1000))
    await rig.connect()
    proxy.blackhole()  # what is sent now vanishes: no PUBACK
    first = rig.submit(3)
    assert rig.stats()["inflight"] == 3
    rig.uplink.hold = True
    later = rig.submit(2)
    assert await wait_until(lambda: rig.stats()["inflight"] == 0 and rig.stats()["messages"] == 5)  # link dropped
    proxy.blackhole(False)
    assert await rig.uplink.wait_connected(10)
    rig.uplink.hold = False
    await sub.collect(5)
    assert [s for s, _ in parsed(sub.messages)] == first + later


async def test_a_closed_data_gate_spools_and_its_opening_replays_in_order(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, spool=SpoolSection(replay_rate=1000))
    await rig.connect()
    before = rig.submit(3)
    assert await wait_until(lambda: rig.stats()["delivered"] == 3)
    rig.uplink.hold = True  # connected, but data held back (a byte budget spent, a Sparkplug host offline)
    held = rig.submit(5)
    await rig.settle()
    assert (rig.stats()["messages"], rig.stats()["delivered"]) == (5, 3)
    rig.uplink.hold = False
    await sub.collect(8)
    assert parsed(sub.messages) == [(s, False) for s in before] + [(s, True) for s in held]


# ---------------------------------------------------------------------------------------------- full spool


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_a_full_spool_applies_its_policy_and_counts_what_it_dropped(proxy, rigs, mqtt_subscriber, caplog, policy):
    caplog.set_level(logging.INFO, logger="gateway.delivery")
    sub = await mqtt_subscriber(TOPIC)
    cfg = SpoolSection(max_bytes=64 * 1024, policy=policy, replay_rate=1000)
    rig = await rigs(proxy, spool=cfg)
    await rig.connect()
    await outage(proxy, rig)
    seqs = []
    for _ in range(4):  # about 160 KB into a 64 KiB spool, in several writes
        seqs += rig.submit(10, size=4000)
        await rig.settle()
    st = rig.stats()
    kept, dropped = st["messages"], st["dropped_messages"]
    assert kept > 0 and dropped > 0 and kept + dropped == 40
    assert st["bytes"] <= cfg.max_bytes
    assert st["dropped_samples"] == dropped * SAMPLES
    assert st["dropped_by_reason"]["full"] == {"messages": dropped, "samples": dropped * SAMPLES}
    assert caplog.text.count("spool full") == 1  # one line per episode, not per message
    await proxy.accept()
    await sub.collect(kept)
    expected = seqs[-kept:] if policy == "drop_oldest" else seqs[:kept]
    assert parsed(sub.messages) == [(s, True) for s in expected]
    assert await wait_until(lambda: rig.stats()["messages"] == 0)
    assert rig.stats()["dropped_messages"] == dropped  # replaying is not dropping
    assert await wait_until(
        lambda: f"{dropped} message(s) ({dropped * SAMPLES} samples) dropped in total" in caplog.text
    )


async def test_a_message_larger_than_the_spool_is_dropped_under_its_own_reason(proxy, rigs):
    cfg = SpoolSection(max_bytes=64 * 1024)
    rig = await rigs(proxy, spool=cfg)
    await rig.connect()
    await outage(proxy, rig)
    rig.submit(1, size=70 * 1024)
    rig.submit(1)
    await rig.settle()
    st = rig.stats()
    assert (st["messages"], st["dropped_messages"]) == (1, 1)
    assert st["dropped_by_reason"]["oversize"] == {"messages": 1, "samples": SAMPLES}


# ------------------------------------------------------------------------------------------------ shutdown


async def test_close_lets_what_is_in_flight_be_acknowledged_first(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy)
    await rig.connect()
    seqs = rig.submit(100)
    await rig.stop()  # at once: most of them are still in RAM or awaiting their PUBACK
    assert rig.stats()["delivered"] == 100
    assert [s for s, _ in parsed(await sub.collect(100))] == seqs
    again = await rigs(proxy)
    assert again.stats()["messages"] == 0  # nothing left behind to be sent twice


async def test_close_spools_what_was_not_acknowledged_and_the_next_start_replays_it(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, flush_timeout=0.3)
    await rig.connect()
    proxy.blackhole()
    first = rig.submit(6)
    await rig.stop()
    assert rig.stats()["delivered"] == 0
    proxy.blackhole(False)
    proxy.cut()
    again = await rigs(proxy)
    assert (again.stats()["messages"], again.stats()["samples"]) == (6, 6 * SAMPLES)
    later = again.submit(1)
    assert later[0] > max(first)  # numbers never repeat across restarts
    await again.connect()
    await sub.collect(7)
    got = parsed(sub.messages)
    assert [s for s, r in got if r] == first
    assert [s for s, r in got if not r] == later


async def test_durability_always_writes_ahead_and_forgets_once_acknowledged(proxy, rigs, mqtt_subscriber):
    sub = await mqtt_subscriber(TOPIC)
    rig = await rigs(proxy, spool=SpoolSection(durability="always"), ack_timeout=1.0)
    await rig.connect()
    seqs = rig.submit(20)
    st = rig.stats()
    assert (st["inflight"], st["ram_queued"]) == (0, 0)  # not sent before the write-ahead log has it on disk
    await sub.collect(20)
    assert parsed(sub.messages) == [(s, False) for s in seqs]
    assert await wait_until(lambda: rig.delivery.wal is not None and rig.delivery.wal.messages == 0)
    assert rig.delivery.wal.end > 0  # it was written
    # a half-open link: what was sent from the write-ahead log goes to the backlog and is replayed
    proxy.blackhole()
    more = rig.submit(5)
    assert await wait_until(lambda: rig.stats()["messages"] == 5)
    proxy.blackhole(False)
    await sub.collect(25)
    assert parsed(sub.messages)[20:] == [(s, True) for s in more]
    assert await wait_until(lambda: rig.stats()["messages"] == 0 and rig.delivery.wal.messages == 0)
