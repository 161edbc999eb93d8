"""The ``iiot-gateway`` command as an integrator runs it: real processes, signals and exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path


from helpers import MqttSubscriber, free_port, wait_port_open
from simulators.local_broker import port_open

ROOT = Path(__file__).resolve().parent.parent
EXE = [sys.executable, "-m", "gateway.cli"]
NS = "acme/plant-a/press-shop/line1"


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *EXE, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_validate_ok_prints_a_summary():
    code, out, _ = await run_cli("validate", "config/demo.yaml")
    assert code == 0
    assert out.strip() == "config/demo.yaml: OK — 2 assets, 8 tags (modbus_tcp: 1, opcua: 1)"


BAD = """\
gateway:
  id: gw
  namespace: a/b
mqtt:
  host: 127.0.0.1
  publish_intervall: 1s
assets:
  - id: press
    source: {driver: modbus_tcp, host: 127.0.0.1}
    tags:
      - {name: p, address: 1, type: float32}
      - {name: q, address: 465536, type: float32}
"""


async def test_validate_and_run_report_every_config_error_with_its_line_and_exit_2(tmp_path):
    bad = tmp_path / "plant.yaml"
    bad.write_text(BAD)
    for command in ("validate", "run"):
        code, out, err = await run_cli(command, str(bad))
        assert code == 2, (command, err)
        lines = err.strip().splitlines()
        assert any(f"{bad}:6: mqtt.publish_intervall: unknown key" in x for x in lines), err
        assert any(f"{bad}:11: assets[0].tags[0].address" in x and '"00001"' in x for x in lines), err
        assert any(f"{bad}:12: assets[0].tags[1]" in x and "65535" in x for x in lines), err


async def test_schema_is_json_with_the_driver_models():
    import json

    code, out, _ = await run_cli("schema")
    schema = json.loads(out)
    assert code == 0 and "modbus_tcp" in out and "opcua" in out and schema["type"] == "object"


async def test_run_publishes_and_stops_cleanly_on_sigterm(tmp_path, mqtt_broker, modbus_sim):
    api_port = free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        (ROOT / "config/demo.yaml")
        .read_text()
        .replace("gateway:\n", f"gateway:\n  state_dir: {tmp_path / 'state'}\n", 1)
        .replace("port: 1883", f"port: {mqtt_broker.port}")
        .replace("port: 5020", f"port: {modbus_sim.port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{api_port}")
    )
    sub = await MqttSubscriber(mqtt_broker.host, mqtt_broker.port, f"{NS}/#").start()
    proc = await asyncio.create_subprocess_exec(*EXE, "run", str(cfg), cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    try:
        msg = await sub.next(lambda m: m.topic == f"{NS}/press-3/data", timeout=20)
        assert "pressure" in msg.json()["tags"]
        # the OPC UA server of demo.yaml is not running: that asset is disconnected, the press is not hurt
        await sub.next(lambda m: m.topic == f"{NS}/oven-1/status" and m.text == "disconnected", timeout=20)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 5)  # the documented stop deadline
        assert code == 0
        await sub.next(lambda m: m.topic == f"{NS}/_gateway/line1-gw/status" and m.text == "offline")
        assert not port_open("127.0.0.1", api_port)
        log = (await proc.stderr.read()).decode()
        # one warning for the missing OPC UA server, not one per retry
        assert log.count("asset oven-1: connect failed") == 1, log
    finally:
        sub.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_demo_shows_data_on_mqtt_and_ctrl_c_stops_everything(tmp_path):
    # (about 4 s from start to the first data message here; not asserted as a time: the machines are shared)
    ports = {k: free_port() for k in ("mqtt", "modbus", "opcua", "api")}
    proc = await asyncio.create_subprocess_exec(
        *EXE,
        "demo",
        *(f"--{k}-port={v}" for k, v in ports.items()),
        f"--state-dir={tmp_path}",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    sub = None
    try:
        await wait_port_open("127.0.0.1", ports["mqtt"], timeout=30)
        sub = await MqttSubscriber("127.0.0.1", ports["mqtt"], f"{NS}/#").start()
        for asset in ("press-3", "oven-1"):
            msg = await sub.next(lambda m: m.topic == f"{NS}/{asset}/data", timeout=30)
            assert msg.json()["asset"] == asset
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        out = (await proc.stdout.read()).decode()
        assert f"http://127.0.0.1:{ports['api']}/api/v1/assets" in out
        assert f"-p {ports['mqtt']} -t '{NS}/#'" in out
        assert not any(port_open("127.0.0.1", p) for p in ports.values())
    finally:
        if sub:
            sub.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_run_with_an_unreadable_tls_ca_file_exits_2_before_starting(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        (ROOT / "config/demo.yaml")
        .read_text()
        .replace("  publish_interval: 1s\n", f"  publish_interval: 1s\n  tls: {{ca_file: {tmp_path}/nope.pem}}\n")
    )
    for command in ("validate", "run"):  # validate runs the check run does before starting
        code, _, err = await run_cli(command, str(cfg), timeout=30)
        assert code == 2, (command, err)
        assert f"{cfg}:" in err and f"mqtt.tls.ca_file: '{tmp_path}/nope.pem': cannot load CA bundle" in err, err
        assert "starting" not in err  # nothing was started


async def test_two_assets_on_one_serial_port_with_different_parity_exit_2_without_a_traceback(tmp_path):
    """Found by a tester: validate said OK, run crashed with a traceback (a restart every 5 s under systemd)."""
    port = tmp_path / "ttyRS485"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "gateway: {id: gw, namespace: acme/site}\nmqtt: {host: 127.0.0.1, port: 1}\napi: {enabled: false}\nassets:\n"
        f"  - id: a\n    source: {{driver: modbus_rtu, port: {port}, parity: E, unit: 1}}\n"
        "    tags: [{name: t, address: 40001, type: int16}]\n"
        f"  - id: b\n    source: {{driver: modbus_rtu, port: {port}, parity: N, unit: 2}}\n"
        "    tags: [{name: t, address: 40001, type: int16}]\n"
    )
    for command in ("validate", "run"):
        code, _, err = await run_cli(command, str(cfg), timeout=30)
        assert code == 2, (command, err)
        assert err.startswith(f"{cfg}:9: assets[1].source.parity: parity 'N' differs from asset 'a'"), err
        assert "Traceback" not in err
