"""Helpers of the serial_line tests: config files for instrument assets, loaded by the normal loader.

A module of its own (not conftest) so test modules can import it whatever else pytest collected first."""

from __future__ import annotations

import textwrap
from pathlib import Path



def write_gateway_yaml(tmp_path: Path, asset_yaml: str, *, mqtt_host: str = "127.0.0.1", mqtt_port: int = 1883,
                       api_port: int = 8080, extra: str = "") -> Path:
    """A whole gateway config with one or more assets (``asset_yaml``: a YAML list, unindented)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            gateway:
              id: test-gw
              namespace: acme/test/line1
              state_dir: {tmp_path / "state"}
            mqtt:
              host: {mqtt_host}
              port: {mqtt_port}
              publish_interval: 200ms
              keepalive: 5s
              reconnect_max: 1s
            api:
              listen: 127.0.0.1:{api_port}
            buffer:
              seconds: 60
            """
        )
        + extra
        + "assets:\n"
        + textwrap.indent(textwrap.dedent(asset_yaml), "  ")
    )
    return path


SCALE_PATTERN = r"'(?P<status>ST|US),GS,(?P<weight>[-+]\d+\.\d+)kg'"
THERMO_PATTERN = r"'T1=(?P<t1>[-+]\d+\.\d+);T2=(?P<t2>[-+]\d+\.\d+);(?P<status>OK|ER)'"


def scale_asset(port: str, *, checksum: str = "", poll: str = "100ms", timeout: str = "500ms",
                extra: str = "") -> str:
    return f"""\
- id: scale-1
  source:
    driver: serial_line
    port: {port}
    mode: poll
    command: 'P\\r\\n'
    poll: {poll}
    timeout: {timeout}
    pattern: {SCALE_PATTERN}
    {checksum}
    {extra}
  tags:
    - {{name: weight_g, group: weight, unit: g, scale: 1000}}
    - {{name: stable, group: status, type: bool, true_values: [ST], false_values: [US]}}
"""


def thermo_asset(port: str, *, checksum: str = "", extra: str = "", asset_id: str = "oven-probe") -> str:
    return f"""\
- id: {asset_id}
  source:
    driver: serial_line
    port: {port}
    mode: stream
    poll: 50ms
    pattern: {THERMO_PATTERN}
    {checksum}
    {extra}
  tags:
    - {{name: zone1, group: t1, unit: degC}}
    - {{name: zone2_f, group: t2, unit: degF, scale: 1.8, offset: 32}}
    - {{name: probe_ok, group: status, type: bool, true_values: [OK], false_values: [ER]}}
    - {{name: status_text, group: status, type: string}}
"""
