"""Small YAML configs for the config tests, and finding the line of a piece of text."""

from __future__ import annotations

from pathlib import Path

BASE = """\
gateway:
  id: gw-1
  namespace: acme/site/area/line
mqtt:
  host: 127.0.0.1
  port: 1883
  publish_interval: 1s
assets:
  - id: press-3
    source:
      driver: modbus_tcp
      host: 127.0.0.1
      port: 5020
      poll: 100ms
    tags:
      - {name: pressure, address: 40001, type: float32, byte_order: CDAB}
      - {name: strokes, address: 40003, type: uint32}
  - id: oven-1
    source:
      driver: opcua
      endpoint: opc.tcp://127.0.0.1:4840/
    tags:
      - {name: zone1_temp, node: "ns=2;s=Oven1.Zone1.Temperature", unit: degC}
"""


def write(tmp_path: Path, text: str, name: str = "plant.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]
