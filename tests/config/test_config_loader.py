"""Loading config files: the demo, located errors, duplicates, YAML problems, float text."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import BASE, line_of, write

from gateway.config import ConfigError, YamlFloat, load_config

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cases"


def errors_of(path: Path, **kw) -> list:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=kw.pop("env", {}), **kw)
    return info.value.errors


def test_demo_config_loads():
    config = load_config(REPO / "config" / "demo.yaml", env={})
    assert config.gateway.id == "line1-gw"
    assert [a.id for a in config.assets] == ["press-3", "oven-1"]
    press, oven = config.assets
    assert press.source.driver == "modbus_tcp" and press.source.poll == pytest.approx(0.1)
    assert {t.name: str(t.ref) for t in press.tags}["door_open"] == "hr:9.3"
    assert {t.name: str(t.ref) for t in press.tags}["running"] == "co:0"
    assert oven.source.driver == "opcua" and oven.source.poll == pytest.approx(0.5)
    assert config.mqtt.username is None and config.mqtt.password is None  # ${MQTT_USER:-} unset
    assert config.mqtt.publish_interval == 1.0


def test_base_config_loads(tmp_path):
    config = load_config(write(tmp_path, BASE), env={})
    assert len(config.assets) == 2


def test_float_keeps_its_text_so_bit_10_survives(tmp_path):
    text = BASE.replace("{name: strokes, address: 40003, type: uint32}", "{name: flag, address: 40010.10, type: bit}")
    config = load_config(write(tmp_path, text), env={})
    flag = config.assets[0].tags[1]
    assert flag.ref.bit == 10 and flag.ref.offset == 9


def test_yaml_floats_carry_text_and_ints_stay_ints(tmp_path):
    from gateway.config.roundtrip import _yaml

    data = _yaml().load("a: 40010.10\nb: 1.50\nc: 00042\n")
    assert isinstance(data["a"], YamlFloat) and data["a"].text == "40010.10" and data["a"] == 40010.1
    assert data["b"].text == "1.50"
    assert isinstance(data["c"], int) and not isinstance(data["c"], YamlFloat)
    assert data["c"] == 42  # YAML 1.2: a leading zero is not octal


def test_unknown_key_points_at_its_line_and_suggests(tmp_path):
    text = BASE.replace("{name: strokes, address: 40003", "{name: strokes, adress: 40003")
    [missing, unknown] = sorted(errors_of(write(tmp_path, text)), key=lambda e: e.path)
    line = line_of(text, "adress")
    assert (unknown.line, unknown.path) == (line, "assets[0].tags[1].adress")
    assert "unknown key 'adress'" in unknown.message
    assert "did you mean 'address'" in unknown.message
    assert "allowed: name, " in unknown.message and "byte_order" in unknown.message
    assert missing.path == "assets[0].tags[1].address" and "missing" in missing.message
    assert str(unknown).startswith(f"{tmp_path / 'plant.yaml'}:{line}: assets[0].tags[1].adress: ")


def test_unknown_top_level_section(tmp_path):
    text = BASE + "mqqt:\n  host: x\n"
    [err] = errors_of(write(tmp_path, text))
    assert err.line == line_of(text, "mqqt") and err.path == "mqqt"
    assert "did you mean 'mqtt'" in err.message


def test_wrong_type(tmp_path):
    text = BASE.replace("port: 1883", "port: eighteen")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "eighteen"), "mqtt.port")
    assert "integer" in err.message and "'eighteen'" in err.message


def test_wrong_enum_lists_choices(tmp_path):
    text = BASE.replace("type: float32", "type: flaot32")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "flaot32"), "assets[0].tags[0].type")
    assert "int16, uint16" in err.message and "did you mean 'float32'" in err.message


def test_invalid_duration(tmp_path):
    text = BASE.replace("poll: 100ms", "poll: 100 msec")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "100 msec"), "assets[0].source.poll")
    assert "not a duration" in err.message and "100ms" in err.message


def test_missing_required_field_points_at_parent(tmp_path):
    text = BASE.replace("  host: 127.0.0.1\n  port: 1883\n", "  port: 1883\n")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "mqtt:"), "mqtt.host")
    assert "required key 'host' is missing" in err.message


def test_missing_section(tmp_path):
    text = BASE.replace("gateway:\n  id: gw-1\n  namespace: acme/site/area/line\n", "")
    [err] = errors_of(write(tmp_path, text))
    assert err.path == "gateway" and err.line == 1


def test_unknown_driver_points_at_driver_line(tmp_path):
    text = BASE.replace("driver: opcua", "driver: opc-ua")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "opc-ua"), "assets[1].source.driver")
    assert "modbus_tcp, opcua" in err.message and "did you mean 'opcua'" in err.message


def test_driver_name_is_not_in_the_path(tmp_path):
    text = BASE.replace('unit: degC}', 'unit: degC, scale: big}')
    [err] = errors_of(write(tmp_path, text))
    assert err.path == "assets[1].tags[0].scale"


def test_duplicate_asset_id_at_second_occurrence(tmp_path):
    text = BASE.replace("id: oven-1", "id: press-3")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "id: press-3", nth=2), "assets[1].id")
    assert err.message == f"duplicate asset id 'press-3' (first at line {line_of(text, 'id: press-3')})"


def test_duplicate_tag_name_at_second_occurrence(tmp_path):
    text = BASE.replace("name: strokes", "name: pressure")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "name: pressure", nth=2), "assets[0].tags[1].name")
    assert "duplicate tag name 'pressure'" in err.message


def test_same_tag_name_in_two_assets_is_fine(tmp_path):
    text = BASE.replace("name: zone1_temp", "name: pressure")
    assert load_config(write(tmp_path, text), env={}).assets[1].tags[0].name == "pressure"


def test_duplicate_mapping_key():
    [err] = errors_of(CASES / "duplicate_key.yaml")
    assert (err.line, err.path) == (7, "mqtt.host")
    assert err.message == "duplicate key 'host' (first at line 5)"


def test_invalid_yaml_syntax_has_line_and_column():
    [err] = errors_of(CASES / "bad_syntax.yaml")
    assert (err.line, err.column) == (6, 8)
    assert str(err).startswith(f"{CASES / 'bad_syntax.yaml'}:6:8: invalid YAML: ")


def test_missing_file(tmp_path):
    [err] = errors_of(tmp_path / "nope.yaml")
    assert str(err) == f"{tmp_path / 'nope.yaml'}: cannot read the config file: No such file or directory"


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    [err] = errors_of(write(tmp_path, text))
    assert "empty" in err.message


def test_top_level_not_a_mapping(tmp_path):
    [err] = errors_of(write(tmp_path, "- a\n- b\n"))
    assert "mapping at the top level" in err.message


def test_all_errors_reported_at_once_in_file_order(tmp_path):
    text = (
        BASE.replace("id: gw-1", "id: gw 1")
        .replace("port: 1883", "port: 0")
        .replace("type: uint32", "type: uint33")
        .replace("poll: 100ms", "poll: soon")
        .replace("endpoint: opc.tcp://", "endpoint: http://")
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    errors = info.value.errors
    assert [e.path for e in errors] == [
        "gateway.id",
        "mqtt.port",
        "assets[0].source.poll",
        "assets[0].tags[1].type",
        "assets[1].source.endpoint",
    ]
    assert [e.line for e in errors] == sorted(e.line for e in errors)
    assert str(info.value).splitlines() == [str(e) for e in errors]


def test_bare_integer_modbus_address_is_rejected_with_accepted_forms():
    [err] = errors_of(CASES / "bare_int_address.yaml")
    assert (err.line, err.path) == (13, "assets[0].tags[0].address")
    assert "bare number 1" in err.message
    assert '"00001"' in err.message and "hr:0" in err.message and "40010.3" in err.message


def test_float32_at_last_register_is_impossible(tmp_path):
    text = BASE.replace("address: 40003, type: uint32", "address: 465536, type: uint32")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "465536"), "assets[0].tags[1]")
    assert "past the last register" in err.message


def test_unquoted_substitution_in_flow_mapping_gets_a_hint(tmp_path):
    text = BASE.replace("type: uint32}", "type: ${TYPE}}")
    [err] = errors_of(write(tmp_path, text))
    assert err.line == line_of(text, "${TYPE}") and 'must be quoted: "${VAR}"' in err.message


def test_asset_without_driver(tmp_path):
    text = BASE.replace("      driver: opcua\n", "")
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "source:", nth=2), "assets[1].source")
    assert "'driver' is missing" in err.message and "modbus_tcp, opcua" in err.message


def test_asset_that_is_not_a_mapping(tmp_path):
    text = BASE + "  - just-a-name\n"
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "just-a-name"), "assets[2]")
    assert "expected a mapping" in err.message


def test_keys_merged_from_an_anchor_point_at_the_anchor(tmp_path):
    text = BASE.replace("mqtt:\n", "mqtt: &broker\n") + (
        "  - id: other\n    source:\n      <<: *broker\n      driver: modbus_tcp\n"
        "    tags: [{name: a, address: hr:0, type: int16}]\n"
    )
    [err] = errors_of(write(tmp_path, text))
    assert (err.line, err.path) == (line_of(text, "publish_interval"), "assets[2].source.publish_interval")
    assert "unknown key 'publish_interval'" in err.message


def test_one_line_for_a_value_that_fails_every_union_member(tmp_path):
    from gateway.config.common import StrictModel

    class Model(StrictModel):
        limit: int | list[int]

    [err] = errors_of(write(tmp_path, "limit: lots\n"), model=Model)
    assert (err.line, err.path) == (1, "limit")
    assert "valid integer" in err.message and "; or expected a list" in err.message


def test_a_tag_the_driver_cannot_read_within_its_limits_is_a_config_error_at_the_asset(tmp_path):
    text = BASE.replace("      poll: 100ms\n", "      poll: 100ms\n      max_registers_per_read: 10\n", 1).replace(
        "      - {name: strokes, address: 40003, type: uint32}",
        "      - {name: strokes, address: 40003, type: uint32}\n"
        "      - {name: label, address: 40100, type: string, length: 20}",
    )
    [issue] = errors_of(write(tmp_path, text))
    assert (issue.line, issue.path) == (line_of(text, "- id: press-3"), "assets[0]")
    assert "tag 'label' (string, 20 registers) is larger than max_registers_per_read=10" in issue.message
