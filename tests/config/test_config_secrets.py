"""No config error ever shows the value of a secret key, however the value was written.

Each spelling is one a tester found echoed by ``validate`` (a numeric MQTT password, a short ``api.token``,
a numeric OPC UA password, an alias typo that breaks the YAML), or a way to reach the same value
(``${ENV}``, ``${file:...}``, an anchor, a list, a float).
"""

from __future__ import annotations

import pytest
from config_helpers import line_of, write

from gateway.config import ConfigError, load_config
from gateway.config.cli import cmd_validate

HEAD = "gateway: {id: gw-1, namespace: acme/site}\n"
OPCUA = ("assets:\n  - id: oven\n    source:\n      driver: opcua\n      endpoint: opc.tcp://127.0.0.1:4840/\n"
         "      username: operator\n      password: {pw}\n    tags: [{{name: t, node: 'ns=2;s=x'}}]\n")  # fmt: skip
MQTT = "mqtt:\n  host: 127.0.0.1\n  password: {pw}\n"


def messages(tmp_path, text: str, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(path), [str(e) for e in info.value.errors]


CASES = {
    "numeric MQTT password": (HEAD + MQTT.format(pw="98765432101") + OPCUA.format(pw='"x"'), "98765432101",
                              "mqtt.password"),
    "numeric OPC UA password": (HEAD + MQTT.format(pw="x") + OPCUA.format(pw="12345678"), "12345678",
                                "assets[0].source.password"),
    "float password": (HEAD + MQTT.format(pw="1.5e3") + OPCUA.format(pw="x"), "1.5e3", "mqtt.password"),
    "password as a list": (HEAD + MQTT.format(pw="[Hunter2Secret, 42]") + OPCUA.format(pw="x"), "Hunter2Secret",
                           "mqtt.password"),
    "short api token": (HEAD + MQTT.format(pw="x") + "api:\n  token: tok3n-x\n" + OPCUA.format(pw="x"), "tok3n-x",
                        "api.token"),
    "alias to a number": (HEAD + "x-defaults: &pw 5550123\n" + MQTT.format(pw="*pw") + OPCUA.format(pw="x"),
                          "5550123", "mqtt.password"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_secret_value_is_never_echoed(tmp_path, case):
    text, secret, where = CASES[case]
    path, errs = messages(tmp_path, text)
    mine = [e for e in errs if f": {where}" in e]
    assert mine, errs  # the error is still reported, at its line and path
    assert mine[0].startswith(f"{path}:{line_of(text, secret if case != 'alias to a number' else '*pw')}: {where}")
    assert not any(secret in e for e in errs), errs


def test_a_number_where_a_secret_is_expected_says_to_quote_it(tmp_path):
    _, errs = messages(tmp_path, HEAD + MQTT.format(pw="98765432101") + OPCUA.format(pw='"x"'))
    assert any("mqtt.password" in e and "quote it" in e for e in errs), errs


@pytest.mark.parametrize("style", ["block", "flow"])
def test_an_alias_typo_in_a_password_breaks_the_yaml_without_showing_it(tmp_path, style, capsys):
    mqtt = (MQTT.format(pw="*Hunter2Secret") if style == "block"
            else "mqtt: {host: 127.0.0.1, password: *Hunter2Secret}\n")  # fmt: skip
    path = write(tmp_path, HEAD + mqtt)
    assert cmd_validate(str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:{2 + (style == 'block') * 2}:") and "undefined alias" in err, err
    assert "Hunter2Secret" not in err


@pytest.mark.parametrize("how", ["env", "file"])
def test_a_substituted_short_token_is_not_shown(tmp_path, how):
    (tmp_path / "token").write_text("s3cr\n")
    ref = "${API_TOKEN}" if how == "env" else "${file:token}"
    text = HEAD + MQTT.format(pw="x") + f'api:\n  token: "{ref}"\n' + OPCUA.format(pw="x")
    _, errs = messages(tmp_path, text, env={"API_TOKEN": "s3cr"})
    (err,) = [e for e in errs if "api.token" in e]
    assert "16 characters" in err and ref in err
    assert not any("s3cr" in e for e in errs), errs


def test_a_secret_reused_through_an_alias_elsewhere_is_redacted_there_too(tmp_path):
    text = "mqtt:\n  host: 127.0.0.1\n  password: &pw 'Hunter 2 Secret'\n" + (
        "gateway: {id: *pw, namespace: acme/site}\n" + OPCUA.format(pw="x")
    )
    _, errs = messages(tmp_path, text)
    assert any("gateway.id" in e for e in errs), errs
    assert not any("Hunter 2 Secret" in e for e in errs), errs


def test_a_malformed_substitution_inside_a_literal_secret_does_not_quote_it(tmp_path):
    text = HEAD + MQTT.format(pw='"Hun${ter 2}x"') + OPCUA.format(pw="x")
    _, errs = messages(tmp_path, text)
    (err,) = [e for e in errs if "mqtt.password" in e]
    assert "cannot resolve" in err and "ter 2" not in err, err


def test_an_unset_variable_in_a_secret_is_named(tmp_path):
    text = HEAD + MQTT.format(pw='"${MQTT_PASSWORD}"') + OPCUA.format(pw="x")
    _, errs = messages(tmp_path, text)
    assert any("mqtt.password: environment variable MQTT_PASSWORD is not set" in e for e in errs), errs
