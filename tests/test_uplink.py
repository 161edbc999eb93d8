"""MqttUplink against a real broker (Mosquitto where installed): delivery, status/will, outages, queue bounds."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config.models import MqttSection
from gateway.uplink import MqttUplink, UplinkConfigError
from helpers import MosquittoBroker, MqttSubscriber, TcpProxy, free_port, mosquitto_binary, wait_until

REPO = Path(__file__).resolve().parents[1]


def make_uplink(host: str, port: int, *, status: str = "t/gw/status", **overrides) -> MqttUplink:
    cfg = MqttSection(host=host, port=port, keepalive=5, reconnect_max=1, **overrides)
    return MqttUplink(cfg, client_id="gw-test", status_topic=status)


class Running:
    """``async with Running(uplink):`` runs the uplink in a task and stops it cleanly at the end."""

    def __init__(self, uplink: MqttUplink) -> None:
        self.uplink = uplink

    async def __aenter__(self) -> MqttUplink:
        self.task = asyncio.create_task(self.uplink.run())
        return self.uplink

    async def __aexit__(self, *exc: object) -> None:
        await self.uplink.stop()
        await asyncio.wait_for(self.task, 5)


def data_of(sub, topic: str = "t/data") -> list[str]:
    return [m.text for m in sub.messages if m.topic == topic]


async def test_publishes_qos1_and_counts_acks(mqtt_broker, mqtt_subscriber):
    sub = await mqtt_subscriber("t/#")
    uplink = make_uplink(mqtt_broker.host, mqtt_broker.port)
    async with Running(uplink):
        assert await uplink.wait_connected(10)
        for i in range(50):
            uplink.publish("t/data", f"m{i}".encode())
        received = await sub.collect(50, lambda m: m.topic == "t/data")
        assert [m.text for m in received] == [f"m{i}" for i in range(50)]
        assert all(m.qos == 1 for m in received)
        assert await wait_until(lambda: uplink.stats["acked"] == 51)  # and the retained "online"
        assert uplink.stats["inflight"] == 0


async def test_retained_online_then_offline_on_clean_stop(mqtt_broker, mqtt_subscriber):
    uplink = make_uplink(mqtt_broker.host, mqtt_broker.port)
    async with Running(uplink):
        assert await uplink.wait_connected(10)
        late = await mqtt_subscriber("t/gw/status")  # subscribes after the fact: sees the retained value
        first = await late.next()
        assert (first.text, first.retain) == ("online", True)
    last = await late.next(lambda m: m.text == "offline")
    assert last.topic == "t/gw/status"
    after = await mqtt_subscriber("t/gw/status")
    assert (await after.next()).text == "offline"


async def test_last_will_offline_when_the_gateway_process_dies(mqtt_broker, mqtt_subscriber):
    sub = await mqtt_subscriber("t/gw/status")
    script = textwrap.dedent(f"""
        import asyncio, sys
        from gateway.config.models import MqttSection
        from gateway.uplink import MqttUplink
        async def main():
            up = MqttUplink(MqttSection(host={mqtt_broker.host!r}, port={mqtt_broker.port}),
                            client_id="gw-dies", status_topic="t/gw/status")
            task = asyncio.create_task(up.run())
            await up.wait_connected(10)
            print("connected", flush=True)
            await task
        asyncio.run(main())
    """)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"connected"
        await sub.next(lambda m: m.text == "online")
        proc.send_signal(signal.SIGKILL)
        will = await sub.next(lambda m: m.text == "offline", timeout=10)
        assert will.topic == "t/gw/status"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    later = await mqtt_subscriber("t/gw/status")
    retained = await later.next()
    assert (retained.text, retained.retain) == ("offline", True)


async def test_cancelled_run_leaves_the_will_behind(mqtt_broker, mqtt_subscriber):
    sub = await mqtt_subscriber("t/gw/status")
    uplink = make_uplink(mqtt_broker.host, mqtt_broker.port)
    task = asyncio.create_task(uplink.run())
    assert await uplink.wait_connected(10)
    await sub.next(lambda m: m.text == "online")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await sub.next(lambda m: m.text == "offline")).topic == "t/gw/status"
    assert not uplink.connected


async def test_broker_down_at_start_is_retried_and_logged_once(mqtt_broker, mqtt_subscriber, caplog):
    caplog.set_level(logging.INFO, logger="gateway.uplink")
    await mqtt_broker.stop()
    changes: list[bool] = []
    cfg = MqttSection(host=mqtt_broker.host, port=mqtt_broker.port, keepalive=5, reconnect_max=1)
    uplink = MqttUplink(cfg, client_id="gw-test", status_topic="t/gw/status", on_connection_change=changes.append)
    uplink.publish("t/data", b"before-connect")
    async with Running(uplink):
        assert await wait_until(lambda: uplink.stats["connect_failures"] >= 2)
        assert not uplink.connected
        assert "127.0.0.1" in uplink.stats["last_error"]
        warnings = [r for r in caplog.records if r.name == "gateway.uplink" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]

        await mqtt_broker.start()
        assert await uplink.wait_connected(10)
        sub = await mqtt_subscriber("t/data")
        uplink.publish("t/data", b"after-connect")
        await sub.next(lambda m: m.text == "after-connect")
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert changes[:1] == [True]


async def test_retained_state_survives_an_outage_newest_wins(mqtt_broker, mqtt_subscriber):
    """Broker killed and restarted empty: the newest retained state of each topic is published again after the
    reconnect (older states of the same topic are not), a non-retained message sent while down is counted as
    dropped, not queued. Data messages never take this path: they belong to the delivery and its spool."""
    proxy = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await proxy.accept()
    uplink = make_uplink(proxy.host, proxy.port)
    try:
        async with Running(uplink):
            assert await uplink.wait_connected(10)
            uplink.publish("t/a/status", "connected", retain=True)
            await proxy.refuse()
            await mqtt_broker.stop()
            assert await wait_until(lambda: not uplink.connected)
            for state in ("disconnected", "connecting", "connected-again"):
                uplink.publish("t/a/status", state, retain=True)
            uplink.publish("t/b/status", "connected", retain=True)
            uplink.publish("t/a/cmd/result", "{}")  # a command answer has no one to go to: dropped, counted
            assert uplink.stats["dropped"] == 1
            await mqtt_broker.start()
            sub = await mqtt_subscriber("t/+/status")
            await proxy.accept()
            assert await uplink.wait_connected(10)
            got = {m.topic: m.text for m in await sub.collect(2, lambda m: m.topic != "t/gw/status")}
            assert got == {"t/a/status": "connected-again", "t/b/status": "connected"}
            assert not any(m.topic == "t/a/status" and m.text != "connected-again" for m in sub.messages)
            assert uplink.stats["reconnects"] == 1
    finally:
        await proxy.close()


async def test_non_retained_messages_before_the_first_connect_are_not_kept(mqtt_broker, mqtt_subscriber):
    sub = await mqtt_subscriber("t/#")
    uplink = make_uplink(mqtt_broker.host, mqtt_broker.port)
    for i in range(3):
        uplink.publish("t/data", str(i))
    uplink.publish("t/state", "s1", retain=True)
    uplink.publish("t/state", "s2", retain=True)
    assert uplink.stats["dropped"] == 3
    async with Running(uplink):
        assert (await sub.next(lambda m: m.topic == "t/state")).text == "s2"
        assert data_of(sub) == []


async def test_half_open_link_is_detected_by_keepalive(mqtt_broker):
    proxy = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    await proxy.accept()
    cfg = MqttSection(host=proxy.host, port=proxy.port, reconnect_max=1).model_copy(update={"keepalive": 1.0})
    uplink = MqttUplink(cfg, client_id="gw-test", status_topic="t/gw/status")
    try:
        async with Running(uplink):
            assert await uplink.wait_connected(10)
            proxy.blackhole()
            assert await wait_until(lambda: not uplink.connected, timeout=10)
            assert "keep alive" in uplink.stats["last_error"].lower()
            proxy.blackhole(False)
            assert await uplink.wait_connected(10)
            assert uplink.stats["reconnects"] == 1
    finally:
        await proxy.close()


async def test_publish_rejects_what_can_never_be_sent(mqtt_broker):
    uplink = make_uplink(mqtt_broker.host, mqtt_broker.port)
    with pytest.raises(ValueError, match="topic"):
        uplink.publish("t/+/x", b"1")
    with pytest.raises(ValueError, match="qos"):
        uplink.publish("t/x", b"1", qos=2)


async def until_received(send, check, attempts: int = 100) -> bool:
    """Send until ``check()`` holds (a subscription becomes active at an unknown moment after connect)."""
    for _ in range(attempts):
        send()
        if await wait_until(check, timeout=0.1):
            return True
    return False


async def test_subscribe_receives_and_survives_reconnect(mqtt_broker):
    received: list[tuple[str, bytes]] = []
    uplink = make_uplink(mqtt_broker.host, mqtt_broker.port)
    uplink.subscribe("t/cmd/#", lambda topic, payload, retained: received.append((topic, payload)))
    async with Running(uplink):
        assert await uplink.wait_connected(10)
        assert await until_received(lambda: uplink.publish("t/cmd/a", b"1"), lambda: ("t/cmd/a", b"1") in received)
        await mqtt_broker.stop()
        await mqtt_broker.start()
        assert await wait_until(lambda: uplink.connected and uplink.stats["reconnects"] == 1)
        assert await until_received(lambda: uplink.publish("t/cmd/b", b"2"), lambda: ("t/cmd/b", b"2") in received)


async def test_unreachable_port_does_not_raise(mqtt_broker):
    uplink = make_uplink("127.0.0.1", free_port())
    uplink.publish("t/data", b"x")
    async with Running(uplink):
        assert await wait_until(lambda: uplink.stats["connect_failures"] >= 1)
        assert not await uplink.wait_connected(0.1)
    assert uplink.stats["dropped"] == 1  # a non-retained message with no connection is dropped and counted


async def _make_certs(d: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    ):
        proc = await asyncio.create_subprocess_exec(
            "openssl", *args, cwd=d, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()


@pytest.mark.skipif(not (mosquitto_binary() and shutil.which("openssl")), reason="needs mosquitto and openssl")
async def test_tls_verifies_the_broker_certificate(tmp_path):
    await _make_certs(tmp_path)
    tls_port = free_port()
    broker = MosquittoBroker(
        tmp_path,
        extra_conf=f"listener {tls_port} 127.0.0.1\ncafile {tmp_path}/ca.pem\n"
        f"certfile {tmp_path}/server.pem\nkeyfile {tmp_path}/server.key\n",
    )
    await broker.start()
    sub = None
    try:
        sub = await MqttSubscriber(broker.host, broker.port, "t/data").start()
        good = make_uplink("127.0.0.1", tls_port, tls={"ca_file": str(tmp_path / "ca.pem")})
        async with Running(good):
            assert await good.wait_connected(10)
            good.publish("t/data", b"over-tls")
            await sub.next(lambda m: m.text == "over-tls")

        untrusted = make_uplink("127.0.0.1", tls_port, tls={})  # system CAs do not know our test CA
        async with Running(untrusted):
            assert await wait_until(lambda: untrusted.stats["connect_failures"] >= 1)
            assert not untrusted.connected
            assert "certificate verify failed" in untrusted.stats["last_error"].lower()

        insecure = make_uplink("127.0.0.1", tls_port, tls={"insecure_skip_verify": True})
        async with Running(insecure):
            assert await insecure.wait_connected(10)
    finally:
        if sub is not None:
            sub.close()
        await broker.stop()


async def test_unreadable_ca_file_is_a_clear_config_error(tmp_path):
    uplink = make_uplink("127.0.0.1", free_port(), tls={"ca_file": str(tmp_path / "missing.pem")})
    with pytest.raises(UplinkConfigError, match="ca_file"):
        await uplink.run()
