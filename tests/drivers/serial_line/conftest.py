"""Fixtures of the serial_line tests (helpers live in serial_helpers.py)."""

from __future__ import annotations

import pytest
from helpers import gateway_config

from gateway.config.loader import load_config


@pytest.fixture
def load_asset(tmp_path):
    """``load_asset(yaml)`` -> the validated asset config of a one-asset file (through ``load_config``)."""

    def load(asset_yaml: str):
        return load_config(gateway_config(tmp_path, assets_yaml=asset_yaml), env={}).assets[0]

    return load
