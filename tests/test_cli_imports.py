"""Every ``iiot-gateway`` command builds the whole CLI parser; building it must not import the simulators
(``simulate``'s serial-instrument options once brought the RTU and TCP simulators, pymodbus's server side
and the plant model into ``iiot-gateway run``: 30 MiB and 0.3 s of start-up on a PC), nor the protocol
libraries and tools behind the drivers' commands (their entry points add arguments only)."""

from __future__ import annotations

import subprocess
import sys

from helpers import gateway_config

HEAVY = ("simulators.modbus_sim", "simulators.modbus_rtu_sim", "simulators.plant", "pymodbus", "asyncua",
         "drivers.opcua.tools", "drivers.modbus.probe", "drivers.modbus.kepware")


def test_building_the_cli_imports_no_simulator() -> None:
    code = ("import sys; from gateway.cli import build_parser; p = build_parser(); "
            "p.parse_args(['browse', 'opc.tcp://h:4840']); p.parse_args(['probe', 'modbus', 'h', '--address', '1']); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_instruments_modbus_crc_checksum_is_still_crc16_modbus() -> None:
    from simulators.serial_instrument import CHECKSUMS

    fn, width = CHECKSUMS["crc16_modbus"]
    assert (fn(b"123456789"), width) == (0x4B37, 4)  # the CRC-16/MODBUS check value


PRESS = """\
- id: press
  source: {driver: modbus_tcp, host: 127.0.0.1, port: 5020}
  tags: [{name: p, address: 40001, type: int16}]
"""


def test_a_gateway_without_the_api_never_imports_fastapi(tmp_path) -> None:
    """FastAPI, uvicorn and the API module are ~20 MiB of a Pi's RAM: only ``api.enabled`` loads them."""
    path = gateway_config(tmp_path, mqtt_port=1883, assets_yaml=PRESS)  # api: enabled: false
    code = ("import sys; from gateway.config import load_config; from gateway.daemon import build; "
            f"gw = build(load_config({str(path)!r})); "
            "print(gw.serve_api, sorted(m for m in ('fastapi', 'uvicorn', 'gateway.api') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None []"
    gateway_config(tmp_path, mqtt_port=1883, api_port=8089, assets_yaml=PRESS)  # the same file: built, not bound
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "gateway.api" in out and "None" not in out
