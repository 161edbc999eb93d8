"""${VAR}, ${VAR:-default}, ${file:...} and $${ in config values; secrets never shown in errors."""

from __future__ import annotations

import pytest
from config_helpers import BASE, line_of, write

from gateway.config import ConfigError, load_config


def with_mqtt(extra: str) -> str:
    return BASE.replace("  publish_interval: 1s\n", f"  publish_interval: 1s\n{extra}")


def test_variable_is_substituted(tmp_path):
    text = with_mqtt("  username: ${MQTT_USER}\n  password: pre-${MQTT_PASSWORD}-post\n")
    config = load_config(write(tmp_path, text), env={"MQTT_USER": "alice", "MQTT_PASSWORD": "s3cret"})
    assert config.mqtt.username == "alice"
    assert config.mqtt.password.get_secret_value() == "pre-s3cret-post"


@pytest.mark.parametrize("env", [{}, {"MQTT_USER": ""}])
def test_default_when_unset_or_empty(tmp_path, env):
    text = with_mqtt("  username: ${MQTT_USER:-anonymous}\n")
    assert load_config(write(tmp_path, text), env=env).mqtt.username == "anonymous"


def test_empty_default(tmp_path):
    text = with_mqtt("  username: ${MQTT_USER:-}\n")
    assert load_config(write(tmp_path, text), env={}).mqtt.username is None


def test_set_but_empty_variable_without_default_is_empty(tmp_path):
    text = with_mqtt("  username: ${MQTT_USER}\n")
    assert load_config(write(tmp_path, text), env={"MQTT_USER": ""}).mqtt.username is None


def test_unset_variable_is_an_error_naming_line_and_variable(tmp_path):
    text = with_mqtt("  password: ${MQTT_PASSWORD}\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [err] = info.value.errors
    assert (err.line, err.path) == (line_of(text, "MQTT_PASSWORD"), "mqtt.password")
    assert "environment variable MQTT_PASSWORD is not set" in err.message
    assert str(err).startswith(f"{path}:{err.line}: mqtt.password: ")


def test_number_looking_value_stays_a_string_and_pydantic_coerces(tmp_path):
    text = BASE.replace("port: 1883", "port: ${MQTT_PORT}").replace("host: 127.0.0.1\n  port", "host: ${HOST}\n  port")
    config = load_config(write(tmp_path, text), env={"MQTT_PORT": "1884", "HOST": "10"})
    assert config.mqtt.port == 1884
    assert config.mqtt.host == "10"


def test_secret_file(tmp_path):
    (tmp_path / "pw").write_text("from-a-file\n")
    text = with_mqtt(f"  username: u\n  password: ${{file:{tmp_path / 'pw'}}}\n")
    config = load_config(write(tmp_path, text), env={})
    assert config.mqtt.password.get_secret_value() == "from-a-file"


def test_secret_file_relative_to_config_dir(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "user").write_text("bob\r\n")
    text = with_mqtt("  username: ${file:secrets/user}\n")
    assert load_config(write(tmp_path, text), env={}).mqtt.username == "bob"


def test_unreadable_secret_file_is_an_error(tmp_path):
    text = with_mqtt("  password: ${file:/nonexistent/secret}\n")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    [err] = info.value.errors
    assert err.line == line_of(text, "nonexistent") and err.path == "mqtt.password"
    assert "${file:/nonexistent/secret}" in err.message and "cannot read" in err.message


def test_escape_gives_a_literal(tmp_path):
    text = with_mqtt("  username: $${NOT_A_VAR} costs $5\n")
    assert load_config(write(tmp_path, text), env={}).mqtt.username == "${NOT_A_VAR} costs $5"


@pytest.mark.parametrize("bad", ["${1X}", "${A:B}", "${unclosed"])
def test_malformed_substitution_is_an_error(tmp_path, bad):
    text = with_mqtt(f'  username: "{bad}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    [err] = info.value.errors
    assert err.path == "mqtt.username" and "${VAR:-default}" in err.message


def test_unresolved_value_gets_no_second_error(tmp_path):
    text = BASE.replace("port: 1883", "port: ${MQTT_PORT}")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert [e.path for e in info.value.errors] == ["mqtt.port"]


def test_secret_never_appears_in_errors(tmp_path):
    secret = "hunter2-very-secret"
    (tmp_path / "secret").write_text(secret)
    text = (
        BASE.replace("port: 1883", "port: ${MQTT_PASSWORD}")
        .replace("poll: 100ms", "poll: ${file:secret}")
        .replace("type: float32", 'type: "${MQTT_PASSWORD}"')
        .replace("id: gw-1", "id: ${MQTT_PASSWORD:-x} and more")
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={"MQTT_PASSWORD": secret})
    errors = info.value.errors
    assert [e.path for e in errors] == ["gateway.id", "mqtt.port", "assets[0].source.poll", "assets[0].tags[0].type"]
    assert secret not in str(info.value)
    assert all("(value from ${" in e.message for e in errors)
    assert "(value from ${file:secret})" in errors[2].message
