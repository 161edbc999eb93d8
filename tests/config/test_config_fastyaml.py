"""The libyaml path (gateway/config/fastyaml.py) gives the round-trip path's data, or hands the file over."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, YamlFloat, load_config
from gateway.config import roundtrip as rt
from gateway.config.fastyaml import plain_data

REPO = Path(__file__).resolve().parents[2]
ENV = {"MQTT_PASSWORD": "s3cret", "EMPTY": ""}


def round_trip(text: str, base: Path) -> object:
    doc = rt._parse("f.yaml", text)
    data = rt._plain(doc, doc.tree, (), (0, 0), ENV, base)
    assert not doc.issues
    return data


def typed(value: object) -> object:
    """``value`` with every scalar's type (and a float's text) spelled out, so 1 == 1.0 == True do not hide."""
    if isinstance(value, dict):
        return {("key", type(k).__name__, k): typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, repr(value), getattr(value, "text", None))


def same_or_handed_over(text: str, base: Path = REPO) -> bool:
    """True when the libyaml path read ``text`` (and gave the same data), False when it handed it over."""
    fast = plain_data(text, ENV, base)
    if fast is None:
        return False
    assert typed(fast) == typed(round_trip(text, base))
    return True


YAML_FILES = sorted(p for p in REPO.glob("**/*.yaml") if ".venv" not in p.parts and "node_modules" not in p.parts)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_of_the_repository(path):
    text = path.read_text()
    try:
        reference = round_trip(text, path.parent)
    except Exception:  # noqa: BLE001 - a file the round-trip path refuses must not be read here either
        assert plain_data(text, ENV, path.parent) is None
        return
    fast = plain_data(text, ENV, path.parent)
    if fast is not None:
        assert typed(fast) == typed(reference)


def test_the_demo_and_the_bench_config_take_the_libyaml_path():
    assert same_or_handed_over((REPO / "config" / "demo.yaml").read_text())
    tags = [{"name": f"i{i}", "address": f"hr:{i}", "type": "int16", "scale": 0.1} for i in range(200)]
    cfg = {
        "gateway": {"id": "gw"},
        "mqtt": {"host": "h", "publish_interval": 1.0},
        "assets": [
            {"id": f"dev{d}", "source": {"driver": "modbus_tcp", "host": "h", "poll": 1.0}, "tags": tags}
            for d in range(5)
        ],
    }
    assert same_or_handed_over(json.dumps(cfg))  # what bench writes: JSON is YAML
    assert same_or_handed_over(json.dumps(cfg, indent=2))


SCALARS = [
    "",
    "~",
    "null",
    "Null",
    "NULL",
    "nUll",
    "true",
    "True",
    "TRUE",
    "tRue",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "Yes",
    "0",
    "-0",
    "+0",
    "00",
    "007",
    "017",
    "08",
    "0o17",
    "0x1F",
    "0b101",
    "1_000",
    "+12",
    "-12",
    "12",
    "1.5",
    "-1.5",
    "+1.5",
    "1.",
    ".5",
    "-.5",
    "1e3",
    "1E3",
    "1e-3",
    "1.5e3",
    "1.5E+3",
    "1_0.5",
    ".inf",
    "-.inf",
    ".Inf",
    ".nan",
    ".NaN",
    "1:20",
    "1:20:30",
    "1:20.5",
    "2026-01-01",
    "2026-01-01T10:00:00Z",
    "2026-1-1",
    "2026-01-01 10:00:00",
    "40001",
    "4x0001",
    "hr:0",
    "hr:9.3",
    "40010.10",
    "ns=2;s=x",
    "=",
    "<<",
    "-",
    "1.2.3",
    "10.0.0.1",
    "0.1",
    "1e",
    "e3",
    "0x",
    "12abc",
    '"quoted"',
    "'single'",
    '"1.5"',
    '"true"',
    "'~'",
    "a b c",
    "a #comment",
    "${MQTT_PASSWORD}",
    "x${EMPTY}y",
    "$${LITERAL}",
    '"\\u00e9t\\u00e9"',
    "été",
    "[1, 2.50, on]",
    "{a: 1, b: [x, 2]}",
    "[]",
    "{}",
    "-1_0",
    "0.0",
    "-0.0",
    "1e400",
    "123456789012345678901234567890",
    "1__2.5",  # underscores float() refuses: the round-trip path reads them
    ".5_",
    "1_.5",
    "<spare>",  # only << and = resolve specially, not every text starting with < or =
    "=x",
]


@pytest.mark.parametrize("scalar", SCALARS)
def test_scalars_resolve_as_on_the_round_trip_path(scalar):
    same_or_handed_over(f"v: {scalar}\nlist:\n  - {scalar}\n")


def test_the_common_scalars_are_read_here():
    for scalar in ["", "null", "true", "off", "12", "-3", "1.5", "40010.10", "hr:9.3", "1:20", "'x'", "2.5e-3"]:
        assert same_or_handed_over(f"v: {scalar}\n"), scalar
    data = plain_data("v: 40010.10\n", {}, REPO)
    assert isinstance(data["v"], YamlFloat) and data["v"].text == "40010.10"


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",  # anchors and aliases
        "base: &b {x: 1}\nm:\n  <<: *b\n  y: 2\n",  # merge keys
        "a: 1\na: 2\n",  # a duplicate key: reported with both lines on the round-trip path
        "a: !!str 1\n",  # tags
        "%YAML 1.1\n---\na: yes\n",  # directives
        "a: 1\n---\nb: 2\n",  # several documents
        "- a\n- b\n",  # not a mapping
        "",  # empty
        "1: x\n",
        "true: x\n",
        "~: x\n",
        "? [a]\n: b\n",  # keys that are not strings
        "a: >\n  folded\n  text\n",  # folded block scalars
        "a: ${UNSET_VARIABLE}\n",  # a substitution error, reported on the round-trip path
        "a: [1, 2\n",  # invalid YAML
    ],
)
def test_what_is_handed_to_the_round_trip_path(text):
    assert plain_data(text, ENV, REPO) is None


@pytest.mark.parametrize(
    "text",
    [
        "a: |\n  line 1\n  line 2\nb: |-\n  kept\nc: plain\n  continued\n  here\n",
        "a: |+\n  kept\n\nb: |2\n    indented\n",
        "a: \"folded\n  double\"\nb: 'it''s'\nc: \"tab\\there \\u00e9 \\x41\"\n",
        "a: 1\r\nb: [x, y]\r\nc: {d: e}\r\n",  # CRLF
        "\ufeffa: 1\n",  # a byte order mark
        "# comment\n---\na: 1 # trailing\n...\n",
        "a:\n- 1\n- - nested\n  - list\n- {k: v}\n",
        "a: b: c\n",  # invalid: both refuse
        "a:\tb\n",
        "a: b\t\n",
        "a:\n\t- b\n",  # tabs that ruamel refuses and libyaml takes
    ],
)
def test_yaml_syntax_forms(text):
    try:
        round_trip(text, REPO)
    except Exception:  # noqa: BLE001 - refused on the round-trip path: must be handed over
        assert plain_data(text, ENV, REPO) is None
        return
    assert same_or_handed_over(text)


def test_tabs_and_yaml_1_1_line_breaks_are_handed_over():
    for char in "\t\x85\u2028\u2029":
        assert plain_data(f"a: x{char}y\n", ENV, REPO) is None


def test_nesting_too_deep_is_handed_over():
    deep = "a: " + "[" * 70 + "]" * 70 + "\n"
    assert plain_data(deep, ENV, REPO) is None
    shallow = "a: " + "[" * 10 + "1" + "]" * 10 + "\n"
    assert same_or_handed_over(shallow)


def test_block_nesting_is_read_here_exactly_as_deep_as_the_round_trip_path_takes_it():
    """The limit of MAX_DEPTH holds on both paths: a file one level deeper than the round-trip path takes
    must not be read here (it would pass without the error the round-trip path gives)."""
    deepest_read = 0
    for depth in range(58, 68):
        text = "".join("  " * i + "a:\n" for i in range(depth)) + "  " * depth + "b: 1\n"
        try:
            refused = bool(rt._parse("f.yaml", text).issues)
        except ConfigError:
            refused = True
        if refused:
            assert plain_data(text, ENV, REPO) is None, depth
        else:
            assert same_or_handed_over(text), depth
            deepest_read = depth
    assert deepest_read >= 60  # the range spans the limit


def test_a_file_that_fails_validation_still_gets_lines(tmp_path):
    path = tmp_path / "plant.yaml"
    path.write_text(
        "gateway:\n  id: gw\nmqtt:\n  host: h\nassets:\n  - id: a\n    source: {driver: modbus_tcp, "
        "host: h}\n    tags:\n      - {name: t, address: 40001, type: int17}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert f"{path}:9:" in str(info.value) and "assets[0].tags[0].type" in str(info.value)


def test_a_valid_file_is_loaded_without_importing_ruamel(tmp_path):
    """ruamel.yaml and the round-trip path (about 2 MiB of a Pi's RAM) are loaded only for a file with errors."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text((REPO / "config" / "demo.yaml").read_text())
    bad.write_text(good.read_text().replace("type: float32", "type: float33", 1))
    code = (
        "import sys; from gateway.config import ConfigError, load_config\n"
        "try: load_config(sys.argv[1], env={})\nexcept ConfigError: pass\n"
        "print(sorted(m for m in ('ruamel.yaml', 'gateway.config.roundtrip') if m in sys.modules))"
    )
    run = [sys.executable, "-c", code]
    assert subprocess.run(run + [str(good)], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    out = subprocess.run(run + [str(bad)], capture_output=True, text=True, check=True).stdout
    assert "ruamel.yaml" in out


# Drawn documents: nested block and flow collections of the scalar forms above, keys included.
_KEYS = st.sampled_from(["id", "name", "on", "no", "y", "key", "a b", "x-y", "Ünit", "'q'", '"d"', "true"])
_COMMON = [
    "on",
    "off",
    "yes",
    "no",
    "y",
    "n",
    "12",
    "-3",
    "0",
    "1.5",
    "40010.10",
    "1e3",
    "-.5",
    "null",
    "~",
    "true",
    "False",
    "hr:9.3",
    "1:20",
    "x y",
    "'q'",
    '"d"',
    "",
    "${MQTT_PASSWORD}",
]
_TEXTS = st.sampled_from(_COMMON) | st.sampled_from(
    SCALARS + ["a: b", "- x", "#x", "x #y", "[", "}", "'", '"', "&a", "*a", "!x", "%", "@", "`"]
)


def _render(value, indent: int, flow: bool) -> str:
    pad = " " * indent
    if isinstance(value, dict):
        if flow or not value:
            return "{" + ", ".join(f"{k}: {_render(v, 0, True)}" for k, v in value.items()) + "}"
        return "".join(
            f"\n{pad}{k}: {_render(v, indent + 2, False).lstrip(' ')}"
            if not isinstance(v, (dict, list)) or not v
            else f"\n{pad}{k}:{_render(v, indent + 2, False)}"
            for k, v in value.items()
        )
    if isinstance(value, list):
        if flow or not value:
            return "[" + ", ".join(_render(v, 0, True) for v in value) + "]"
        return "".join(f"\n{pad}- {_render(v, indent + 2, True)}" for v in value)
    return value


_DOCS = st.recursive(
    _TEXTS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12
)


@pytest.mark.filterwarnings(r"ignore:\s*found duplicate anchor")  # ruamel's warning on a drawn "&a" twice
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _DOCS, min_size=1, max_size=5), st.booleans())
def test_drawn_documents_read_the_same_on_both_paths(doc, flow):
    text = _render(doc, 0, flow).lstrip("\n") + "\n"
    try:
        round_trip(text, REPO)
    except Exception:  # noqa: BLE001 - refused (or with issues) on the round-trip path: must be handed over
        assert plain_data(text, ENV, REPO) is None, text
        return
    same_or_handed_over(text)
