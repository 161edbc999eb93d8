"""The ``validate`` and ``schema`` commands (wired into ``iiot-gateway`` by :mod:`gateway.cli`)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from gateway.config.errors import ConfigError
from gateway.config.loader import load_config
from gateway.config.models import config_model

EXIT_OK = 0
EXIT_CONFIG = 2
SCHEMA_TITLE = "iiot-gateway config"


def load_or_exit(path: str) -> Any:
    """The validated config of ``path``; on errors they are printed (file:line each) and the process exits 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def summary(path: str, config: Any) -> str:
    """``config/demo.yaml: OK — 2 assets, 8 tags (modbus_tcp: 1, opcua: 1)``."""
    assets = config.assets
    tags = sum(len(a.tags) for a in assets)
    drivers = Counter(a.source.driver for a in assets)
    per_driver = ", ".join(f"{name}: {n}" for name, n in sorted(drivers.items()))
    return (
        f"{path}: OK — {len(assets)} asset{'s' if len(assets) != 1 else ''}, "
        f"{tags} tag{'s' if tags != 1 else ''} ({per_driver})"
    )


def cmd_validate(path: str) -> int:
    """Validate a config file: print a one-line summary and return 0, or print every error to stderr
    (one per line, ``file:line: path: message``) and return 2."""
    try:
        config = load_config(path)
    except ConfigError as e:
        for issue in e.errors:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    print(summary(path, config))
    return EXIT_OK


def schema() -> dict[str, Any]:
    """The JSON Schema of the whole config file, for editors (yaml-language-server) and documentation."""
    doc = config_model().model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **doc,
        "title": SCHEMA_TITLE,
    }


def cmd_schema() -> int:
    """Print the JSON Schema of the config file to stdout; return 0."""
    print(json.dumps(schema(), indent=2, ensure_ascii=False))
    return EXIT_OK
