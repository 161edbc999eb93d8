"""`iiot-gateway bench --quick` produces every figure the issue asks for (their values are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.bench import TARGETS, lookup


@pytest.mark.timeout(240)
def test_bench_quick_prints_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    for path, label, _, _ in TARGETS:
        value = lookup(doc, path)
        assert value is not None and value == value, path
        assert label in proc.stderr  # the table
    assert doc["hot_path"]["naive_samples_per_s"] > 0
    assert doc["hot_path"]["same_messages"] is True  # the naive pipeline did the same work, checked
    for key in ("gateway_cpu_s_per_million", "bare_cpu_s_per_million"):
        assert doc["end_to_end"][key] > 0
    assert {"rbe (any change) / none", "raw / zlib"} <= set(doc["uplink"]["settings"])
    assert doc["latency"]["poll_mode"]["e2e_p50_ms"] > 0


def test_bench_only_runs_the_parts_named():
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "--only", "ring_buffer"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["ring_buffer"]["bytes_per_sample"] > 0
    assert "hot_path" not in doc and "end_to_end" not in doc
    assert list(doc["targets"]) == ["ring buffer bytes per sample"]
    bad = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "--only", "ring_buffer,e2e"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown part(s) e2e" in bad.stderr and "end_to_end" in bad.stderr
