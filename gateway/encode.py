"""Encoders: a data message (a dict of one asset's reduced tags) -> the bytes put on the wire."""

from __future__ import annotations

import json
from typing import Any


def encode_json(msg: dict[str, Any]) -> bytes:
    """Compact JSON (no spaces); values were made JSON-safe by the reducer (no NaN)."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()
