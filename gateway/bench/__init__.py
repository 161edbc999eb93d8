"""``iiot-gateway bench``: every performance figure of docs/performance.md, measured side by side in one run.

It starts what it needs (the bundled Modbus simulator, a broker on a free port, the gateway in a child
process), prints a table on stderr and ONE JSON document on stdout (or into ``--json FILE``). ``--quick``
takes about 90 s; the full run about 4 minutes. Figures, not assertions: targets are printed next to them.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from typing import Any

from gateway import __version__

#: (json path, label, target text, passes(value) -> bool | None)
TARGETS: list[tuple[str, str, str, Any]] = [
    ("hot_path.samples_per_s", "hot path samples/s (one core)", ">= 5,000,000", lambda v: v >= 5e6),
    ("hot_path.ratio", "hot path vs naive per-sample pipeline", ">= 30x", lambda v: v >= 30),
    ("end_to_end.gateway_tags_per_s", "e2e Modbus TCP tags/s delivered (max_in_flight 4)", "", None),
    ("end_to_end.bare_pymodbus_tags_per_s", "e2e bare pymodbus loop tags/s", "", None),
    ("end_to_end.throughput_ratio", "e2e throughput gateway / bare", "", None),
    (
        "end_to_end.gateway_cpu_s_per_million",
        "e2e gateway CPU-s per million samples (max_in_flight 4)",
        "<= 3",
        lambda v: v <= 3,
    ),
    ("end_to_end.one_in_flight_cpu_s_per_million", "same, max_in_flight 1 (the default)", "", None),
    ("end_to_end.cpu_ratio", "e2e CPU per sample gateway / bare", "<= 1.5", lambda v: v <= 1.5),
    ("payload.full_bytes_per_sample", "payload full JSON, wire bytes/sample (1000 regs, 100 ms)", "", None),
    ("payload.compact_bytes_per_sample", "payload compact JSON, wire bytes/sample", "<= 15", lambda v: v <= 15),
    (
        "payload.compact_zstd_bytes_per_sample",
        "payload compact JSON + zstd, wire bytes/sample",
        "<= 5",
        lambda v: v <= 5,
    ),
    ("payload.sparkplug_bytes_per_sample", "payload Sparkplug B DDATA, wire bytes/sample", "", None),
    ("uplink.best_uncompressed_ratio", "uplink bytes/sample vs one-JSON-per-sample", "<= 0.1", lambda v: v <= 0.1),
    ("uplink.best_compressed_ratio", "uplink, compressed", "<= 0.03", lambda v: v <= 0.03),
    (
        "latency.poll_mode.read_to_uplink_p99_ms",
        "latency read done -> uplink (in the gateway) p99 ms",
        "<= 10",
        lambda v: v <= 10,
    ),
    (
        "latency.poll_mode.read_to_subscriber_p99_ms",
        "latency read done -> subscriber p99 ms",
        "<= 10",
        lambda v: v <= 10,
    ),
    ("latency.poll_mode.e2e_p50_ms", "latency change -> subscriber p50 ms (poll 100 ms)", "", None),
    ("latency.poll_mode.e2e_p99_ms", "latency change -> subscriber p99 ms (poll 100 ms)", "<= 120", lambda v: v <= 120),
    ("latency.opcua_subscribe_mode.e2e_p50_ms", "latency change -> subscriber p50 ms (OPC UA subscription)", "", None),
    ("latency.opcua_subscribe_mode.e2e_p99_ms", "latency change -> subscriber p99 ms (OPC UA subscription)", "", None),
    ("scale.cpu_share_of_one_core", "10,000 tags at 1 s: CPU share of one core", "<= 0.10", lambda v: v <= 0.10),
    ("scale.startup_to_first_message_s", "10,000 tags: start-up to the first message, s", "", None),
    ("scale.peak_rss_mb", "10,000 tags at 1 s: peak RSS MiB with the rings written so far", "", None),
    ("scale.ring_mb", "10,000 tags at 1 s: ring buffers MiB (600 s, RingBuffer.nbytes)", "", None),
    (
        "scale.rss_beyond_rings_mb",
        "10,000 tags at 1 s: peak RSS MiB beyond the rings (start-up + run)",
        "<= 60",
        lambda v: v <= 60,
    ),
    ("scale.peak_rss_mb_rings_full", "10,000 tags at 1 s: peak RSS MiB, 600 s rings full", "", None),
    (
        "startup.full_spool_to_first_message_s",
        "start-up to first published message, 256 MiB spool, s",
        "<= 5",
        lambda v: v <= 5,
    ),
    ("startup.empty_spool_to_first_message_s", "same gateway, empty spool: start-up to first message, s", "", None),
    ("startup.full_spool_to_first_live_message_s", "same, to the first live (not replayed) message, s", "", None),
    ("ring_buffer.bytes_per_sample", "ring buffer bytes per sample", "<= 17", lambda v: v <= 17),
    ("hot_path.same_messages", "hot path: both pipelines publish the same messages", "true", lambda v: v is True),
]


def lookup(doc: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        doc = doc[part]
    return doc


#: the parts of a run, in the order they run (``--only`` picks some)
PARTS = ("hot_path", "uplink", "ring_buffer", "payload", "end_to_end", "latency", "scale", "startup")


def run(quick: bool, only: frozenset[str] | None = None) -> dict[str, Any]:
    """Every part of the bench, or the parts named in ``only``; the targets of the parts not run are left out."""
    from gateway.bench.hotpath import hot_path, ring_memory, uplink
    from gateway.bench.live import run_live

    want = frozenset(PARTS) if only is None else only

    started = time.monotonic()
    doc: dict[str, Any] = {
        "version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
        },
    }
    if "hot_path" in want:
        doc["hot_path"] = hot_path(quick)
    if "uplink" in want:
        up = uplink(quick)
        ratios = {k: v["ratio"] for k, v in up["settings"].items()}
        up["best_uncompressed_ratio"] = min(v for k, v in ratios.items() if k.endswith("/ none"))
        up["best_compressed_ratio"] = min(v for k, v in ratios.items() if not k.endswith("/ none"))
        doc["uplink"] = up
    if "ring_buffer" in want:
        doc["ring_buffer"] = ring_memory()
    doc |= asyncio.run(run_live(quick, want))
    doc["targets"] = {
        label: {
            "value": lookup(doc, path),
            "target": target,
            "met": (ok(lookup(doc, path)) if ok and isinstance(lookup(doc, path), (int, float, bool)) else None),
        }
        for path, label, target, ok in TARGETS
        if path.split(".")[0] in doc
    }
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    return doc


def table(doc: dict[str, Any]) -> str:
    rows = [("figure", "value", "target", "met")]
    for label, t in doc["targets"].items():
        v = t["value"]
        text = (
            str(v).lower()
            if isinstance(v, bool)
            else f"{v:,.4g}"
            if isinstance(v, float)
            else f"{v:,}"
            if isinstance(v, int)
            else str(v)
        )
        rows.append((label, text, t["target"], {True: "yes", False: "NO", None: ""}[t["met"]]))
    for k, v in doc.get("uplink", {}).get("settings", {}).items():
        rows.append((f"  uplink {k}", f"{v['bytes_per_sample']:.3g} B ({v['ratio']:.3g}x)", "", ""))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def main_bench(args: Any) -> int:
    # OpenBLAS tuning variables set on some machines slow NumPy down; they matter only to this process's
    # children (the gateway), which are started after this point.
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(var, None)
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the bare loop's disconnect at the end is expected
    # the OPC UA simulator's subscription expires when the gateway of the latency run stops: expected
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    only = None
    if getattr(args, "only", None):
        only = frozenset(p.strip() for p in args.only.split(",") if p.strip())
        unknown = sorted(only - set(PARTS))
        if unknown:
            print(f"bench: unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}", file=sys.stderr)
            return 2
    doc = run(args.quick, only)
    print(table(doc), file=sys.stderr)
    text = json.dumps(doc, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0
