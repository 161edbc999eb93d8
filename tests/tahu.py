"""Eclipse Tahu's JavaScript Sparkplug B codec (npm ``sparkplug-payload``, pinned in
tests/sparkplug/package-lock.json, run with Debian's ``nodejs``): the independent decoder of the Sparkplug
tests. Installed on first use into tests/sparkplug/node_modules (git-ignored). Without node/npm the tests are
skipped, except under ``CI=true`` where that is a failure. The ``tahu`` fixture is in conftest.py."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

HERE = Path(__file__).parent / "sparkplug"
TAHU_VERSION = "1.0.3"


class Tahu:
    """Tahu's JS codec in a node process per call: decode our bytes, encode payload objects."""

    def __init__(self, node: str) -> None:
        self.node = node

    def _run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        text = "".join(json.dumps(r) + "\n" for r in requests)
        done = subprocess.run(
            [self.node, str(HERE / "tahu.js")],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=HERE,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(out) == len(requests), done.stderr
        for o in out:
            assert "error" not in o, o["error"]
        return out

    def decode(self, *payloads: bytes) -> list[dict[str, Any]]:
        """Each payload as Tahu's ``decodePayload`` gives it, plus ``raw`` (the protobuf fields)."""
        out = self._run([{"decode": base64.b64encode(p).decode()} for p in payloads])
        return [{**o["tahu"], "raw": o["raw"]} for o in out]

    def encode(self, *objects: dict[str, Any]) -> list[bytes]:
        return [base64.b64decode(o["b64"]) for o in self._run([{"encode": obj} for obj in objects])]

    def encode_raw(self, *objects: dict[str, Any]) -> list[bytes]:
        """protobufjs's encoding of the protobuf fields as given (camelCase), bypassing Tahu's mapping."""
        return [base64.b64decode(o["b64"]) for o in self._run([{"encode_raw": obj} for obj in objects])]


def _unavailable(why: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {why} (.ci/run installs nodejs and npm)")
    pytest.skip(why)


def make_tahu() -> Tahu:
    node = shutil.which("node") or shutil.which("nodejs")
    npm = shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed to run Eclipse Tahu's JS codec")
    installed = HERE / "node_modules" / "sparkplug-payload" / "package.json"
    if not installed.exists() or json.loads(installed.read_text()).get("version") != TAHU_VERSION:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            _unavailable(f"npm ci of sparkplug-payload@{TAHU_VERSION} failed: {done.stderr[-500:]}")
    return Tahu(node)
