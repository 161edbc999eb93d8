"""Fixtures of the serial_line tests (helpers live in serial_helpers.py)."""

from __future__ import annotations

import pytest
from serial_helpers import write_gateway_yaml

from gateway.config.loader import load_config


@pytest.fixture
def load_asset(tmp_path):
    """``load_asset(yaml)`` -> the validated asset config of a one-asset file (through ``load_config``)."""

    def load(asset_yaml: str):
        return load_config(write_gateway_yaml(tmp_path, asset_yaml), env={}).assets[0]

    return load
