"""The sample config loads; mistakes in a serial_line asset are reported on their line by the config loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import gateway_config
from serial_helpers import SCALE_PATTERN, scale_asset

import drivers.serial_line
from drivers.serial_line.driver import SPEC
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config
from gateway.driver import DriverContext, StreamingDriver

SAMPLE = Path(drivers.serial_line.__file__).parent / "sample.yaml"


def test_sample_config_loads() -> None:
    config = load_config(SAMPLE, env={})
    scale, probe = config.assets
    assert scale.source.command_bytes == b"P\r\n" and scale.source.terminator_bytes == b"\r\n"
    assert scale.source.checksum.kind == "xor8"
    assert [t.group_name for t in probe.tags] == ["t1", "t2", "status"]
    # mode: stream makes a streaming driver (the gateway iterates subscribe()), poll mode a polled one
    assert isinstance(SPEC.create(probe.source, probe.tags, DriverContext.detached("probe", 3)), StreamingDriver)
    assert not isinstance(SPEC.create(scale.source, scale.tags, DriverContext.detached("scale", 1)), StreamingDriver)


def _errors(tmp_path: Path, asset_yaml: str) -> tuple[str, list[str]]:
    path = gateway_config(tmp_path, assets_yaml=asset_yaml)
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    return str(e.value), path.read_text().splitlines()


def _line_of(lines: list[str], needle: str) -> int:
    return next(i for i, s in enumerate(lines, 1) if needle in s)


@pytest.mark.parametrize(
    ("change", "needle", "path", "message"),
    [
        ((SCALE_PATTERN, r"'(?P<status>ST|US,GS,(?P<weight>\d+)'"), "pattern:", "source.pattern",
         "not a valid regular expression: missing ), unterminated subpattern"),
        ((SCALE_PATTERN, r"'ST,GS,(\d+)'"), "pattern:", "source.pattern", "no named group"),
        ("group: status,", "name: stable", "tags[1].group",
         "group 'state' is not in the source's pattern; its groups: status, weight"),
        ("encoding: x", "encoding:", "source.encoding", "unknown encoding 'klingon'"),
        ("command: 'P\\r\\n'", "command:", "source.command", "stream mode sends no command"),
        ("type: bool,", "name: stable", "tags[1].type", "expected one of: number, int, string, bool"),
        ("terminator:", "terminator:", "source.terminator", "bad escape"),
        ("parity:", "parity:", "source.parity", "expected one of: N, E, O, M, S, none, even, odd, mark, space (got 'X')"),
    ],
    ids=["bad-regex", "no-named-group", "group-not-in-pattern", "encoding", "stream-with-command", "tag-type",
         "terminator-escape", "parity"],
)
def test_config_mistakes_name_file_line_and_field(tmp_path: Path, change, needle, path, message) -> None:
    yaml = scale_asset("/dev/ttyUSB0")
    if isinstance(change, tuple):
        yaml = yaml.replace(*change)
    elif change == "group: status,":
        yaml = yaml.replace("group: status,", "group: state,")
    elif change == "encoding: x":
        yaml = yaml.replace("mode: poll", "mode: poll\n    encoding: klingon")
    elif change == "command: 'P\\r\\n'":
        yaml = yaml.replace("mode: poll", "mode: stream")
    elif change == "type: bool,":
        yaml = yaml.replace("type: bool,", "type: boolean,")
    elif change == "terminator:":
        yaml = yaml.replace("mode: poll", "mode: poll\n    terminator: '\\x4'")
    elif change == "parity:":
        yaml = yaml.replace("mode: poll", "mode: poll\n    parity: X")
    text, lines = _errors(tmp_path, yaml)
    line = _line_of(lines, needle)
    assert f"gateway.yaml:{line}: assets[0].{path}: " in text, text
    assert message in text, text


def test_poll_mode_without_command_is_an_error_at_the_source(tmp_path: Path) -> None:
    yaml = scale_asset("/dev/ttyUSB0").replace("    command: 'P\\r\\n'\n", "")
    text, lines = _errors(tmp_path, yaml)
    assert f"gateway.yaml:{_line_of(lines, 'source:')}:" in text and "assets[0].source.command" in text, text
    assert "poll mode needs a command" in text, text


@pytest.mark.parametrize(("written", "letter"), [("even", "E"), ("E", "E"), ("space", "S"), (None, "N")])
def test_parity_is_a_word_or_a_letter_and_always_validates_to_the_letter(tmp_path: Path, written, letter) -> None:
    yaml = scale_asset("/dev/ttyUSB0")
    if written is not None:
        yaml = yaml.replace("mode: poll", f"mode: poll\n    parity: {written}")
    (asset,) = load_config(gateway_config(tmp_path, assets_yaml=yaml), env={}).assets
    assert asset.source.parity == letter


def test_group_defaults_to_the_tag_name(tmp_path: Path) -> None:
    yaml = scale_asset("/dev/ttyUSB0").replace("name: weight_g, group: weight", "name: weigth")
    text, lines = _errors(tmp_path, yaml)
    assert f":{_line_of(lines, 'name: weigth')}: assets[0].tags[0].group: group 'weigth' is not in" in text, text
    assert "set group: to one of them" in text


def test_bool_tags_refuse_a_scale(tmp_path: Path) -> None:
    text, lines = _errors(tmp_path, scale_asset("/dev/ttyUSB0").replace("type: bool,", "type: bool, scale: 2,"))
    assert f":{_line_of(lines, 'name: stable')}: assets[0].tags[1].scale: scale applies to number and int" in text


def test_max_silence_must_fit_in_the_timeout_and_only_in_stream_mode(tmp_path: Path) -> None:
    text, _ = _errors(tmp_path, scale_asset("/dev/ttyUSB0", extra="max_silence: 2s"))
    assert "assets[0].source.max_silence: max_silence applies to stream mode only" in text
    yaml = scale_asset("/dev/ttyUSB0", extra="max_silence: 2s").replace("mode: poll", "mode: stream").replace(
        "    command: 'P\\r\\n'\n", "")
    text, _ = _errors(tmp_path, yaml)
    assert "max_silence (2s) is longer than timeout (0.5s)" in text and "set timeout to at least 2s" in text
