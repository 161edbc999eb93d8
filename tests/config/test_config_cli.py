"""``validate`` and ``schema`` commands (called as functions; the console script is tested with the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

from config_helpers import BASE, line_of, write

from gateway.config.cli import cmd_schema, cmd_validate

REPO = Path(__file__).resolve().parents[2]


def test_validate_ok_prints_summary(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MQTT_USER", raising=False)
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    assert cmd_validate("config/demo.yaml") == 0
    out, err = capsys.readouterr()
    assert out == "config/demo.yaml: OK — 2 assets, 8 tags (modbus_tcp: 1, opcua: 1)\n"
    assert err == ""


def test_validate_errors_exit_2_one_per_line(tmp_path, capsys):
    text = BASE.replace("port: 1883", "port: x").replace("type: uint32", "type: uint33")
    path = write(tmp_path, text)
    assert cmd_validate(str(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:{line_of(text, 'port: x')}: mqtt.port: ")
    assert lines[1].startswith(f"{path}:{line_of(text, 'uint33')}: assets[0].tags[1].type: ")


def test_validate_missing_file_exits_2(tmp_path, capsys):
    assert cmd_validate(str(tmp_path / "nope.yaml")) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_schema_is_json_and_describes_the_drivers(capsys):
    assert cmd_schema() == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "iiot-gateway config"
    assert set(schema["properties"]) >= {"gateway", "mqtt", "api", "buffer", "assets"}
    assert schema["additionalProperties"] is False
    text = json.dumps(schema)
    assert '"modbus_tcp"' in text and '"opcua"' in text
    assert schema["properties"]["mqtt"]["description"]
