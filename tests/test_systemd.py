"""systemd integration: the unit file passes ``systemd-analyze verify``, and the real ``iiot-gateway run``
process speaks the notify protocol (READY=1, WATCHDOG=1, STOPPING=1) on a real datagram NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import free_port, gateway_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "iiot-gateway.service"
PRESS = """\
- id: press-3
  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 100ms}}
  tags:
    - {{name: pressure, address: 40001, type: float32, byte_order: CDAB}}
"""


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_is_notify_with_watchdog_time_sync_and_dialout():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert int(s["WatchdogSec"][0]) >= 10
    for key in ("After", "Wants"):
        assert "time-sync.target" in " ".join(s[key]).split()
    assert s["SupplementaryGroups"] == ["dialout"]


def test_unit_passes_systemd_analyze_verify(tmp_path):
    binary = shutil.which("systemd-analyze")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing on CI: .ci/run installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart= exists: point it at a stand-in for the installed venv's command
    exe = tmp_path / "bin" / "iiot-gateway"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "iiot-gateway.service"
    unit.write_text(UNIT.read_text().replace("/opt/iiot-gateway/bin/iiot-gateway", str(exe)))
    r = subprocess.run([binary, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    # unknown keys and bad values are only warnings (exit 0): any line about our unit is a failure
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if "iiot-gateway" in line]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; collects what the daemon sends."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sdn-")  # short: AF_UNIX paths are limited to 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def next(self, timeout: float = 20.0) -> str:
        async with asyncio.timeout(timeout):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        self.messages.append(data.decode())
        return self.messages[-1]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    ns = NotifySocket()
    yield ns
    ns.close()


async def start_daemon(config: Path, notify: NotifySocket, **env: str) -> asyncio.subprocess.Process:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": notify.path, **env}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run", str(config), env=full,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


async def stop_daemon(proc: asyncio.subprocess.Process, *, signalled: bool) -> int:
    """Wait for the daemon to exit, sending SIGTERM first unless the test did (a second one means "now")."""
    if proc.returncode is None and not signalled:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        return await proc.wait()


async def test_run_says_ready_then_pings_the_watchdog_then_stopping(tmp_path, mqtt_broker, modbus_sim,
                                                                   notify_socket):
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=free_port(),
                         assets_yaml=PRESS.format(port=modbus_sim.port))
    proc = await start_daemon(cfg, notify_socket, WATCHDOG_USEC="300000")  # a ping every 0.15 s
    signalled = False
    try:
        assert await notify_socket.next() == "READY=1"
        pings = [await notify_socket.next() for _ in range(4)]
        assert pings == ["WATCHDOG=1"] * 4
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        signalled = True
        while (msg := await notify_socket.next()) == "WATCHDOG=1":
            pass
        assert msg == "STOPPING=1"
    finally:
        rc = await stop_daemon(proc, signalled=signalled)
    assert rc == 0, (await proc.stderr.read()).decode()[-2000:]


async def test_ready_waits_for_the_first_connect_attempt_even_when_it_fails(tmp_path, modbus_sim, notify_socket):
    # a "broker" that accepts TCP and hangs up at once: the first attempt fails, and only then READY=1
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    broker = SimpleNamespace(host="127.0.0.1", port=port)
    cfg = gateway_config(tmp_path, mqtt_port=broker.port, api_port=free_port(),
                         assets_yaml=PRESS.format(port=modbus_sim.port))
    proc = await start_daemon(cfg, notify_socket)  # no WATCHDOG_USEC: no pings
    signalled = False
    try:
        assert await notify_socket.next() == "READY=1"
        assert attempts >= 1
        assert proc.returncode is None  # a broker that is down does not stop the daemon
        proc.send_signal(signal.SIGTERM)
        signalled = True
        assert await notify_socket.next() == "STOPPING=1"
    finally:
        rc = await stop_daemon(proc, signalled=signalled)
        server.close()
    assert rc == 0


def test_notifier_reaches_an_abstract_socket_and_survives_a_missing_one(caplog):
    from gateway.sdnotify import Notifier

    name = f"iiot-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        sd.bind("\0" + name)  # what systemd passes as NOTIFY_SOCKET=@name
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.send("READY=1")
        assert sd.recv(64) == b"READY=1"
        n.close()
    gone = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert [gone.send("WATCHDOG=1") for _ in range(3)] == [False] * 3  # never raises
    assert len([r for r in caplog.records if "notify socket" in r.getMessage()]) == 1  # logged once
    assert Notifier({}).enabled is False and Notifier({}).send("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process():
    from gateway.sdnotify import Notifier

    base = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert Notifier({**base, "WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({**base, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 15.0
    assert Notifier({**base, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({**base, "WATCHDOG_USEC": "soon"}).watchdog_interval is None
    assert Notifier(base).watchdog_interval is None
