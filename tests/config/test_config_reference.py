"""docs/config.md is generated from the config models, and the committed file is never stale.

What a user relies on: the reference lists every key of every section and driver with its type, default
and description, and it is the current one (regenerate: ``iiot-gateway schema --markdown``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from gateway.config.cli import schema
from gateway.config.reference import _Walker, markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_committed_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == markdown(), (
        "docs/config.md is stale: regenerate it with `iiot-gateway schema --markdown` and commit it"
    )


def test_every_key_of_every_model_is_listed() -> None:
    doc = schema()
    page = markdown()
    models = [doc, *doc["$defs"].values()]
    for model in models:
        for key in model.get("properties", {}):
            assert f"| `{key}` |" in page, key
    for driver in ("modbus_tcp", "modbus_rtu", "modbus_rtu_tcp", "opcua", "serial_line"):
        assert f"## `assets[].source` (driver: {driver})" in page


def test_a_new_option_and_section_appear_without_changing_the_generator() -> None:
    class Extra(BaseModel):
        """A section added later."""

        level: int = Field(3, ge=1, le=9, description="How much")

    class Uplink(BaseModel):
        """An uplink."""

        format: Literal["json", "sparkplug"] = Field("json", description="Payload format")
        extra: Extra | None = None

    class Root(BaseModel):
        uplinks: list[Uplink] = Field(min_length=1)

    page = _Walker(Root.model_json_schema()).markdown()
    assert re.search(r"\| `format` \| one of `json`, `sparkplug` \| `\"json\"` \| Payload format \|", page)
    assert "## `uplinks[].extra`" in page and "| `level` | integer (≥ 1, ≤ 9) | `3` | How much |" in page
