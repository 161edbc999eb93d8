"""``validate`` reports, with file and line, every problem ``run`` would otherwise only meet at start-up.

Each case is a config whose sections are fine one by one but that cannot run as a whole: two assets on one
RS-485 port with different line settings, one unit id twice on a bus, a serial port named by two drivers,
the status API on an address the gateway connects to, an unreadable TLS file.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from config_helpers import line_of, write

from gateway.config import ConfigError, load_config
from gateway.config.cli import cmd_validate
from gateway.config.models import asset_models
from gateway.driver import DriverContext, Shared, registry

HEAD = """\
gateway: {id: gw-1, namespace: acme/site}
mqtt: {host: 127.0.0.1, port: 1883}
api: {listen: "127.0.0.1:18080"}
assets:
"""


def rtu(asset: str, port: object, **source: object) -> str:
    extra = "".join(f", {k}: {v}" for k, v in source.items())
    return (f"  - id: {asset}\n    source: {{driver: modbus_rtu, port: {port}{extra}}}\n"
            f"    tags: [{{name: t, address: 40001, type: int16}}]\n")  # fmt: skip


def errors_of(text: str, tmp_path) -> list[str]:
    """What ``validate`` prints for ``text`` (it must exit 2), each line without its ``file:`` prefix."""
    path = write(tmp_path, text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cmd_validate(str(path)) == 2
    lines = err.getvalue().splitlines()
    assert lines and all(line.startswith(f"{path}:") for line in lines), lines
    with pytest.raises(ConfigError):  # run loads the config the same way
        load_config(path)
    return [line.removeprefix(f"{path}:") for line in lines]


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("parity", "N", "parity 'N' differs"), ("baudrate", 19200, "baudrate 19200 differs"),
     ("stopbits", 2, "stopbits 2 differs")],
)  # fmt: skip
def test_one_serial_line_with_two_settings_is_an_error_at_the_second_asset(tmp_path, field, value, shown):
    port = str(tmp_path / "ttyRS485")
    text = HEAD + rtu("a1", port, unit=1) + rtu("a2", port, unit=2, **{field: value})
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'id: a2') + 1}: assets[1].source.{field}: {shown} from asset 'a1'"), err


def test_the_same_port_through_a_symlink_is_the_same_line(tmp_path):
    real = tmp_path / "ttyUSB0"
    real.touch()
    (tmp_path / "by-id").symlink_to(real)
    text = HEAD + rtu("a1", real, unit=1) + rtu("a2", tmp_path / "by-id", unit=2, parity="O")
    (err,) = errors_of(text, tmp_path)
    assert "assets[1].source.parity: parity 'O' differs" in err


def test_parity_as_a_word_and_as_a_letter_is_one_line(tmp_path):
    """``even`` (an instrument manual) and ``E`` (a Modbus manual) are one setting; ``none`` still differs."""
    port = str(tmp_path / "ttyRS485")
    text = HEAD + rtu("a1", port, unit=1, parity="even") + rtu("a2", port, unit=2, parity="E")
    assert [a.source.parity for a in load_config(write(tmp_path, text), env={}).assets] == ["E", "E"]
    (err,) = errors_of(text + rtu("a3", port, unit=3, parity="none"), tmp_path)
    assert err.startswith(f"{line_of(text, 'id: a2') + 4}: assets[2].source.parity: parity 'N' differs from asset "
                          "'a1' on the same line"), err  # fmt: skip


@pytest.mark.parametrize("parity", ["X", "mark", "S"])
def test_a_wrong_parity_names_file_line_and_field(tmp_path, parity):
    port = str(tmp_path / "ttyRS485")
    text = HEAD + rtu("a1", port, unit=1) + rtu("a2", port, unit=2, parity=parity)
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'id: a2') + 1}: assets[1].source.parity: expected one of: N, E, O, none, "
                          f"even, odd (got '{parity}')"), err  # fmt: skip


def test_mismatched_line_settings_are_what_the_engine_would_refuse_at_start_up(tmp_path):
    """The case above is not a rule of validate's own: building the drivers (Gateway start-up) raises."""
    from ruamel.yaml import YAML

    port = str(tmp_path / "ttyRS485")
    assets = YAML(typ="safe").load(rtu("a1", port, unit=1) + rtu("a2", port, unit=2, parity="N"))
    model = asset_models()["modbus_rtu"]
    spec = registry()["modbus_rtu"]
    first = model.model_validate(assets[0])
    second = model.model_validate(assets[1])
    shared = Shared()  # one gateway's
    held = spec.create(first.source, first.tags, DriverContext.detached("a1", len(first.tags), shared=shared))
    with pytest.raises(ValueError, match="different line settings"):
        spec.create(second.source, second.tags, DriverContext.detached("a2", len(second.tags), shared=shared))
    del held


def test_a_unit_id_twice_on_one_bus_is_an_error(tmp_path):
    port = str(tmp_path / "ttyRS485")
    text = HEAD + rtu("a1", port, unit=7) + rtu("a2", port, unit=7)
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'id: a2') + 1}: assets[1].source.unit: unit 7 on {port} is already used "
                          "by asset 'a1'")  # fmt: skip


def test_the_same_unit_on_two_ports_is_fine(tmp_path):
    text = HEAD + rtu("a1", tmp_path / "ttyA", unit=7) + rtu("a2", tmp_path / "ttyB", unit=7, parity="N")
    assert [a.id for a in load_config(write(tmp_path, text), env={}).assets] == ["a1", "a2"]


def test_a_unit_id_twice_behind_one_rtu_over_tcp_converter_is_an_error(tmp_path):
    asset = ("  - id: {id}\n    source: {{driver: modbus_rtu_tcp, host: 10.0.0.5, port: 4001, unit: 3}}\n"
             "    tags: [{{name: t, address: 40001, type: int16}}]\n")  # fmt: skip
    text = HEAD + asset.format(id="a1") + asset.format(id="a2")
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'id: a2') + 1}: assets[1].source.unit: unit 3 on 10.0.0.5:4001")


def test_a_serial_instrument_on_a_modbus_bus_port_is_an_error(tmp_path):
    port = str(tmp_path / "ttyS0")
    text = HEAD + rtu("bus", port) + (
        f"  - id: scale\n    source: {{driver: serial_line, port: {port}, mode: stream, pattern: '(?P<w>.*)'}}\n"
        "    tags: [{name: w}]\n"
    )
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'id: scale') + 1}: assets[1].source.port: {port} is already used by "
                          "asset 'bus' (Modbus RTU bus)")  # fmt: skip


def test_two_serial_instruments_on_one_port_is_an_error(tmp_path):
    asset = ("  - id: {id}\n    source: {{driver: serial_line, port: /dev/ttyS3, mode: stream, pattern: '(?P<w>.*)'}}\n"
             "    tags: [{{name: w}}]\n")  # fmt: skip
    text = HEAD + asset.format(id="s1") + asset.format(id="s2")
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'id: s2') + 1}: assets[1].source.port: /dev/ttyS3 is already opened by "
                          "asset 's1'")  # fmt: skip


@pytest.mark.parametrize(
    ("listen", "source"),
    [("127.0.0.1:5020", "{driver: modbus_tcp, host: 127.0.0.1, port: 5020}"),
     ("0.0.0.0:5020", "{driver: modbus_tcp, host: localhost, port: 5020}"),
     ("127.0.0.1:4840", '{driver: opcua, endpoint: "opc.tcp://localhost:4840/"}'),
     ("127.0.0.1:1883", "{driver: modbus_tcp, host: 10.0.0.9, port: 502}")],  # the broker's own port
)  # fmt: skip
def test_the_status_api_cannot_listen_where_the_gateway_connects(tmp_path, listen, source):
    text = HEAD.replace("127.0.0.1:18080", listen) + f"  - id: dev\n    source: {source}\n" + (
        "    tags: [{name: t, address: 40001, type: int16}]\n" if "modbus" in source else
        "    tags: [{name: t, node: 'ns=2;s=x'}]\n"
    )  # fmt: skip
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'listen')}: api.listen: {listen} is where "), err


def test_the_status_api_on_another_host_or_port_is_fine(tmp_path):
    text = HEAD.replace("127.0.0.1:18080", "127.0.0.1:5021") + (
        "  - id: dev\n    source: {driver: modbus_tcp, host: 10.0.0.9, port: 5021}\n"
        "    tags: [{name: t, address: 40001, type: int16}]\n"
    )
    assert load_config(write(tmp_path, text), env={}).api.port == 5021


def test_an_opcua_asset_on_the_brokers_port_is_an_error(tmp_path):
    text = HEAD + "  - id: o\n    source: {driver: opcua, endpoint: 'opc.tcp://127.0.0.1:1883'}\n" + (
        "    tags: [{name: t, node: 'ns=2;s=x'}]\n"
    )
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'id: o') + 1}: assets[0].source.endpoint: 127.0.0.1:1883 is already used "
                          "by the MQTT broker")  # fmt: skip


@pytest.mark.parametrize("host", ["ü" * 10, "bad host", "a..b", "-x"])
def test_an_api_host_a_socket_cannot_bind_to_is_an_error(tmp_path, host):
    text = HEAD.replace("127.0.0.1:18080", f"{host}:8080") + rtu("a1", "/dev/ttyS9")
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'listen')}: api.listen: expected host:port"), err


def test_an_unreadable_tls_file_is_reported_by_validate_at_its_line(tmp_path, capsys):
    text = HEAD.replace("port: 1883}", f"port: 8883, tls: {{ca_file: {tmp_path}/nope.pem}}}}") + rtu("a1", "/dev/ttyS9")
    path = write(tmp_path, text)
    assert cmd_validate(str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:2: mqtt.tls.ca_file: '{tmp_path}/nope.pem': cannot load CA bundle"), err


def test_every_conflict_is_reported_at_once(tmp_path):
    port = str(tmp_path / "ttyRS485")
    text = HEAD + rtu("a1", port, unit=1) + rtu("a2", port, unit=1, parity="N")
    errs = errors_of(text, tmp_path)
    assert sorted(e.split(": ")[1] for e in errs) == ["assets[1].source.parity", "assets[1].source.unit"]


def test_a_history_buffer_larger_than_the_ram_limit_is_an_error(tmp_path):
    """run allocated 7 TiB of ring buffer at start-up (MemoryError traceback) for this one."""
    text = HEAD.replace("assets:", "buffer: {seconds: 1000000000}\nassets:") + rtu("a1", "/dev/ttyS9", poll="1ms")
    (err,) = errors_of(text, tmp_path)
    assert err.startswith(f"{line_of(text, 'buffer:')}: buffer.seconds: 1e+09 s of history per tag needs "), err
    assert "for asset 'a1'" in err and "more than 2.0 GiB" in err


def test_a_day_of_history_for_a_thousand_tags_at_one_second_is_fine(tmp_path):
    tags = ", ".join(f"{{name: t{i}, address: {40001 + i}, type: int16}}" for i in range(1000))
    text = HEAD.replace("assets:", "buffer: {seconds: 86400}\nassets:") + (
        f"  - id: big\n    source: {{driver: modbus_tcp, host: 10.0.0.9, poll: 1s}}\n    tags: [{tags}]\n"
    )
    assert load_config(write(tmp_path, text), env={}).buffer.seconds == 86400
