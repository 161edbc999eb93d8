"""The container deployment as shipped: deploy/docker-compose.yml is valid YAML with the properties the Pi
guide promises, its example config validates and matches it, and its health check really tells a running
gateway from a stopped one. (No Docker engine here: the compose file is checked, not run.)"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from e2e.harness import running_gateway
from helpers import free_port, gateway_config
from ruamel.yaml import YAML

from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PRESS = """\
- id: press-3
  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, poll: 100ms}}
  tags:
    - {{name: pressure, address: 40001, type: float32, byte_order: CDAB}}
"""


def compose() -> dict:
    return YAML(typ="safe").load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_the_gateway_read_only_beside_mosquitto_with_a_state_volume_and_dialout():
    c = compose()
    assert set(c["services"]) == {"gateway", "mosquitto"}
    gw = c["services"]["gateway"]
    assert gw["read_only"] is True
    assert "dialout" in gw["group_add"]
    assert "mosquitto" in gw["depends_on"]
    mounts = dict(reversed(v.split(":")[:2]) for v in gw["volumes"])
    assert mounts["/var/lib/iiot-gateway"] in c["volumes"]  # a named volume, not the read-only root
    assert mounts["/etc/iiot-gateway/gateway.yaml"] == "./gateway.yaml"
    assert (DEPLOY / "mosquitto.conf").is_file()
    assert gw["healthcheck"]["test"][0] == "CMD"


def test_the_example_config_validates_and_matches_the_compose_file():
    c = compose()
    gw = c["services"]["gateway"]
    port = gw["environment"]["API_PORT"]
    cfg = load_config(DEPLOY / "gateway.yaml", env={"API_PORT": port})
    assert cfg.mqtt.host == "mosquitto"
    assert cfg.gateway.state_dir == "/var/lib/iiot-gateway"
    assert cfg.api.host == "0.0.0.0" and str(cfg.api.port) == port
    assert f"{port}:{port}" in gw["ports"]


def test_dockerfile_and_compose_use_the_same_health_check():
    docker = (ROOT / "Dockerfile").read_text()
    code = compose()["services"]["gateway"]["healthcheck"]["test"][-1]
    assert re.search(r'CMD python -c "(.*)"', docker).group(1) == code


async def health(code: str, port: int) -> int:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env={**os.environ, "API_PORT": str(port)},
                                                stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait()


async def test_the_health_check_passes_on_a_running_gateway_and_fails_once_it_stops(tmp_path, mqtt_broker,
                                                                                    modbus_sim):
    code = compose()["services"]["gateway"]["healthcheck"]["test"][-1]
    port = free_port()
    cfg = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=port,
                         assets_yaml=PRESS.format(port=modbus_sim.port))
    async with running_gateway(cfg) as rg:
        assert await health(code, port) == 0
        await rg.stop()
    assert await health(code, port) != 0
