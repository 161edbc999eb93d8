"""Helpers of the serial_line tests: the assets of instrument configs (whole files: helpers.gateway_config).

A module of its own (not conftest) so test modules can import it whatever else pytest collected first."""

from __future__ import annotations

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
