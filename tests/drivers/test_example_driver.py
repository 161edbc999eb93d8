"""The example driver of docs/writing-a-driver.md (examples/file_driver): the page shows exactly the code in the
repository, the gateway finds it through a real entry point, and a gateway config using it validates and runs,
publishing to a real broker, without a change in gateway/."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from driver_rigs import EXAMPLE, EXAMPLE_DIR, EXAMPLE_MODULE, REPO, example_installed
from helpers import free_port, gateway_config, reap, start_gateway, stop_gateway

from gateway.driver import DriverContext, DriverSpec, TagMeta, registry

DOC = REPO / "docs" / "writing-a-driver.md"
NS = "acme/example/line1"


def doc_block(source: Path) -> str:
    """The fenced code block that follows ``<!-- <path of source> -->`` in the page."""
    marker = f"<!-- {source.relative_to(REPO).as_posix()} -->"
    m = re.search(re.escape(marker) + r"\n```[a-z]*\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    assert m, f"{DOC.name} has no code block after {marker}"
    return m.group(1)


@pytest.mark.parametrize("source", [EXAMPLE_MODULE, EXAMPLE_DIR / "pyproject.toml"], ids=lambda p: p.name)
def test_the_page_shows_the_code_of_the_repository(source: Path) -> None:
    assert doc_block(source) == source.read_text()


def test_readme_links_the_page() -> None:
    assert "docs/writing-a-driver.md" in (REPO / "README.md").read_text()


@pytest.fixture
def installed(tmp_path) -> Any:
    with example_installed(tmp_path / "site") as paths:
        yield paths


def test_the_entry_point_names_the_spec(installed) -> None:
    spec = registry()[EXAMPLE]
    assert isinstance(spec, DriverSpec) and spec.name == EXAMPLE
    assert spec.SourceConfig.model_fields["driver"].annotation.__args__ == (EXAMPLE,)  # type: ignore[union-attr]


def test_check_refuses_a_writable_file_outside_the_directory(installed) -> None:
    spec = registry()[EXAMPLE]
    source = spec.SourceConfig.model_validate({"driver": "file", "directory": "/sys/class"})
    inside = spec.TagConfig.model_validate({"name": "led", "path": "leds/ACT/brightness", "writable": True})
    outside = spec.TagConfig.model_validate({"name": "x", "path": "../../etc/hostname", "writable": True})
    read_only = spec.TagConfig.model_validate({"name": "y", "path": "../../etc/hostname"})
    spec.check(source, [inside, read_only])
    with pytest.raises(ValueError, match="inside directory /sys/class"):
        spec.check(source, [inside, outside])


def test_create_marks_unscaled_int_tags_as_integers_in_the_publish_metadata(installed, tmp_path) -> None:
    spec = registry()[EXAMPLE]
    source = spec.SourceConfig.model_validate({"driver": "file", "directory": str(tmp_path)})
    tags = [spec.TagConfig.model_validate(t) for t in (
        {"name": "cpu_temp", "path": "temp", "scale": 0.001},  # millidegrees: published as a float
        {"name": "led", "path": "brightness"},
        {"name": "level", "path": "level", "type": "float"},
    )]  # fmt: skip
    meta = TagMeta.empty(len(tags))
    meta.integer[2] = True  # what the gateway set from the config stays set
    spec.create(source, tags, DriverContext(asset="pi", state_dir=tmp_path, meta=meta))
    assert meta.integer.tolist() == [False, True, True] and not meta.float32.any()


def config(tmp_path: Path, mqtt_port: int) -> Path:
    sysfs = tmp_path / "sys"
    (sysfs / "thermal" / "thermal_zone0").mkdir(parents=True)
    (sysfs / "thermal" / "thermal_zone0" / "temp").write_text("47250\n")
    gateway = {"id": "example-gw", "namespace": NS}
    return gateway_config(tmp_path, mqtt_port=mqtt_port, gateway=gateway, assets_yaml=f"""\
        - id: pi-cpu
          source: {{driver: file, directory: {sysfs}, poll: 100ms}}
          tags:
            - {{name: cpu_temp, path: thermal/thermal_zone0/temp, scale: 0.001, unit: degC}}
        """)


def test_validate_knows_the_driver(installed, tmp_path) -> None:
    cfg = config(tmp_path, free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [REPO, *installed]))}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "validate", str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(file: 1)" in done.stdout


async def test_a_gateway_runs_the_driver_and_publishes_its_values(installed, tmp_path, mqtt_broker,
                                                                  mqtt_subscriber) -> None:
    cfg = config(tmp_path, mqtt_broker.port)
    sub = await mqtt_subscriber(f"{NS}/pi-cpu/data")
    proc = await start_gateway(cfg, pythonpath=installed)
    try:
        first = asyncio.ensure_future(sub.next(lambda m: m.json()["tags"].get("cpu_temp", {}).get("q") == "good",
                                               timeout=20))
        exited = asyncio.ensure_future(proc.wait())
        await asyncio.wait({first, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        assert first.done(), f"the gateway exited ({proc.returncode}) before publishing"
        msg = first.result()
        assert msg.json()["tags"]["cpu_temp"]["v"] == pytest.approx(47.25)
        (tmp_path / "sys" / "thermal" / "thermal_zone0" / "temp").write_text("51000\n")
        await sub.next(lambda m: m.json()["tags"].get("cpu_temp", {}).get("v") == pytest.approx(51.0), timeout=20)
        await stop_gateway(proc)
    finally:
        await reap(proc)
