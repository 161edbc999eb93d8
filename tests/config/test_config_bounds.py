"""Config input is bounded: alias bombs, loops, deep nesting and huge files are refused before they expand.

A tester's 651-byte alias bomb ran ``validate`` past 60 s and 530 MB. Memory is what the tests count (with
tracemalloc), not time.
"""

from __future__ import annotations

import tracemalloc

import pytest
from config_helpers import BASE, line_of, write

from gateway.config import ConfigError, bounds, load_config, substitution
from gateway.config.cli import cmd_validate


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n" + BASE.replace("assets:\n", f"x-bomb: *l{levels - 1}\nassets:\n")


def errors_of(path, **kw) -> list:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, **kw)
    return info.value.errors


def test_the_billion_laughs_is_refused_at_its_line_without_expanding(tmp_path, capsys):
    text = billion_laughs()
    assert len(text.encode()) < 1400  # a small file: 9 levels of 9 aliases, 10^9 values once expanded
    path = write(tmp_path, text)
    tracemalloc.start()
    try:
        code = cmd_validate(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2
    err = capsys.readouterr().err
    first_big = next(i for i in range(9) if 10 * 9**i > bounds.MAX_ALIAS_VALUES)
    assert err.startswith(f"{path}:{line_of(text, f'l{first_big}: &l{first_big}')}:"), err
    assert "aliases expand to" in err and "alias bomb" in err
    assert peak < 8 * 1024 * 1024, peak  # nothing was expanded (the tester saw 530 MB)


def test_many_moderate_aliases_that_add_too_much_are_refused_too(tmp_path, monkeypatch):
    monkeypatch.setattr(bounds, "MAX_ALIAS_VALUES", 1000)
    lines = ["defaults: &d [" + ", ".join(["x"] * 50) + "]"] + [f"k{i}: *d" for i in range(30)]
    (err,) = errors_of(write(tmp_path, "\n".join(lines) + "\n"))
    assert err.line == 1 and "aliases expand to 1,6" in err.message  # the whole file: 31 x 51 + 1


def test_reusing_a_tag_list_across_assets_is_fine(tmp_path):
    tags = "\n".join(f"      - {{name: t{i}, address: {40001 + 2 * i}, type: float32}}" for i in range(50))
    assets = "".join(
        f"  - id: press-{n}\n    source: {{driver: modbus_tcp, host: 10.0.0.{n + 1}}}\n    tags: *tags\n"
        for n in range(1, 40)
    )
    text = BASE.split("assets:\n")[0] + (
        "assets:\n  - id: press-0\n    source: {driver: modbus_tcp, host: 10.0.0.1}\n    tags: &tags\n"
        f"{tags}\n{assets}"
    )
    config = load_config(write(tmp_path, text), env={})
    assert len(config.assets) == 40 and all(len(a.tags) == 50 for a in config.assets)


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "gateway: &g {id: g, namespace: a/b, self: *g}\n"])
def test_an_alias_inside_its_own_anchor_is_refused(tmp_path, text):
    (err,) = errors_of(write(tmp_path, text))
    assert err.line == 1 and "refers to the value that contains it" in err.message


@pytest.mark.parametrize("depth", [70, 3000])
def test_deep_nesting_is_refused(tmp_path, depth):
    (err,) = errors_of(write(tmp_path, "a: " + "[" * depth + "]" * depth + "\n"))
    assert "nested" in err.message and "64" in err.message


def test_a_file_larger_than_the_limit_is_refused_after_reading_only_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(bounds, "MAX_FILE_BYTES", 4096)
    path = write(tmp_path, BASE + "#" * 5000 + "\n")
    (err,) = errors_of(path)
    assert err.line is None and "larger than" in err.message
    assert load_config(write(tmp_path, BASE, "small.yaml"), env={}).gateway.id == "gw-1"


def test_a_secret_file_larger_than_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(substitution, "MAX_SECRET_FILE_BYTES", 100)
    (tmp_path / "pw").write_text("x" * 101)
    text = BASE.replace("  publish_interval: 1s\n", "  publish_interval: 1s\n  password: ${file:pw}\n")
    (err,) = errors_of(write(tmp_path, text))
    assert err.path == "mqtt.password" and "${file:pw}: the file is larger than" in err.message
    assert "xxx" not in err.message
