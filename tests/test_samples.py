"""Every sample config we ship loads as written: what an integrator copies must work."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(
    [*ROOT.glob("drivers/*/sample*.yaml"), *ROOT.glob("drivers/*/*_sample.yaml"), ROOT / "config/demo.yaml"]
)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sample_config_validates(path):
    cfg = load_config(path, env={})
    assert cfg.assets and all(a.tags for a in cfg.assets)


def test_every_driver_ships_a_sample():
    from gateway.driver import registry

    shipped = {a.source.driver for p in SAMPLES for a in load_config(p, env={}).assets}
    assert shipped == set(registry())
