"""In-process figures: the vectorised hot path against a naive per-sample pipeline, uplink bytes per
sample for each reduction/encoding setting, and memory per buffered sample.

The hot-path workload comes from a driver package through the entry point group ``iiot_gateway.bench``
(:data:`WORKLOAD` names it; the bundled one is ``drivers.modbus.bench:HotPath``), so this module imports no
driver: one device of ``n_tags`` tags, polled ``polls_per_window`` times per publish window, every tag reduced
to last value + min/max/mean/count per window and encoded as the gateway's JSON message. A workload offers
``tags`` (its tag models), ``float32`` (publish precision per tag), ``description``, ``polls(count, naive=)``
(the answers of successive polls, as the driver receives them or as a plain program would), ``decode(answers,
batch)`` (the driver's own decoding of one poll) and ``naive_layout()`` / ``naive_read(layout, answers, now,
history)`` (the same one sample at a time, one dict per sample).
"""

from __future__ import annotations

import functools
import json
import struct
import time
import tracemalloc
from importlib.metadata import entry_points
from typing import Any, Callable

import numpy as np

from gateway.batch import Batch
from gateway.config.common import TagBase
from gateway.encoders import COMPRESSIONS
from gateway.encoders.json import JsonEncoder, entries
from gateway.reduce import Reducer, integer_tags
from gateway.ringbuffer import RingBuffer
from gateway.uplink.links import publish_size

ENTRY_POINT_GROUP = "iiot_gateway.bench"
#: the workload of the hot path: the entry point of that name in ENTRY_POINT_GROUP
WORKLOAD = "modbus_tcp"


@functools.cache
def workload_class(name: str = WORKLOAD) -> Any:
    """The hot-path workload class a driver package registers under ``name``."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise LookupError(
            f"no hot-path workload {name!r} (entry point group {ENTRY_POINT_GROUP}); "
            "is the package installed (pip install -e .)?"
        )
    return next(iter(found)).load()


def vectorised(
    work: Any, polls_in: list[list[Any]], windows: int, polls: int, messages: list[bytes] | None = None
) -> tuple[int, float]:
    """decode -> ring buffer -> reduce -> encode, the gateway's own code (the driver's decoding of a poll's
    answers, the ring, the reducer, the encoder). Returns (samples, cpu seconds)."""
    tags = work.tags
    ring = RingBuffer(len(tags), polls * 4)
    red = Reducer(tags, ring, heartbeat=60.0, float32=work.float32)
    n = len(tags)
    t0 = time.process_time()
    seq = 0
    encoder = JsonEncoder()
    for w in range(windows):
        for p in range(polls):
            answers = polls_in[(w * polls + p) % len(polls_in)]
            batch = Batch.empty(n, 0)
            batch.ts[:] = time.time_ns()
            work.decode(answers, batch)
            ring.write(batch)
        seq += 1
        reduced = red.reduce(float(w))
        payload = encoder.data("bench", seq, 0, reduced) if reduced is not None else b""
        if messages is not None:
            messages.append(payload)
    return windows * polls * n, time.process_time() - t0


def _shortest_f32(x: float) -> float:
    """A value of a float32 tag as the gateway publishes it: rounded to float32, then the shortest decimal
    that reads back as the same float32."""
    x = struct.unpack("<f", struct.pack("<f", x))[0]
    for digits in (6, 7, 8, 9):
        y = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", y))[0] == x:
            return y
    return x


def _json_number(x: float) -> float:
    return float("%.15g" % x)


def naive(
    work: Any, polls_in: list[list[Any]], windows: int, polls: int, messages: list[bytes] | None = None
) -> tuple[int, float]:
    """The same work one Python object at a time: struct per tag, a dict per sample, lists as buffers, the
    same published numbers (float32 tags at float32 precision, others at 15 digits) and the same message."""
    tags = work.tags
    layout = work.naive_layout()
    history: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tags}
    publishers: dict[str, Callable[[float], Any]] = {
        t.name: (_shortest_f32 if f32 else _json_number) for t, f32 in zip(tags, work.float32.tolist())
    }
    means = dict(publishers)
    for t, integer in zip(tags, integer_tags(tags).tolist()):  # published as JSON integers (their mean is not)
        if integer:
            publishers[t.name] = int
    t0 = time.process_time()
    seq = 0
    for w in range(windows):
        for p in range(polls):
            work.naive_read(layout, polls_in[(w * polls + p) % len(polls_in)], time.time_ns(), history)
        out = {}
        for name, samples in history.items():
            pub = publishers[name]
            vals = [s["value"] for s in samples if s["quality"] == "good"]
            last = samples[-1]
            out[name] = {
                "ts": last["ts"] // 1_000_000,
                "v": pub(last["value"]),
                "q": last["quality"],
                "min": pub(min(vals)),
                "max": pub(max(vals)),
                "mean": means[name](sum(vals) / len(vals)),
                "n": len(vals),
            }
            samples.clear()
        seq += 1
        body = json.dumps({"seq": seq, "ts": 0, "asset": "bench", "tags": out}, separators=(",", ":")).encode()
        if messages is not None:
            messages.append(body)
    return windows * polls * len(tags), time.process_time() - t0


def same_output(vec: list[bytes], nai: list[bytes]) -> bool:
    """Both pipelines published the same messages: same tags, keys, qualities and counts, numbers equal to
    14 significant digits (the gateway's vectorised 15-digit rounding may differ from ``"%.15g"`` in the
    last digit), timestamps aside."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) or isinstance(b, float):
            return abs(a - b) <= 2e-14 * max(abs(a), abs(b))  # one unit in the 15th digit
        return a == b

    for a, b in zip(vec, nai, strict=True):
        da, db = json.loads(a), json.loads(b)
        if da.keys() != db.keys() or da["tags"].keys() != db["tags"].keys():
            return False
        for name, ea in da["tags"].items():
            eb = db["tags"][name]
            if ea.keys() != eb.keys() or not all(same(ea[k], eb[k]) for k in ea if k != "ts"):
                return False
    return True


def hot_path(quick: bool) -> dict[str, Any]:
    n_tags, polls = 2000, 10
    windows = 60  # well under a second of CPU: the same in --quick
    work = workload_class()(n_tags, aggregate=["min", "max", "mean", "count"])
    polls_in = work.polls(polls * 2)
    polls_lists = work.polls(polls * 2, naive=True)
    vec_msgs: list[bytes] = []
    naive_msgs: list[bytes] = []
    vectorised(work, polls_in, 2, polls, vec_msgs)  # warm up, and the messages to compare
    naive(work, polls_lists, 2, polls, naive_msgs)
    # the machine may be shared: several short runs, interleaved, and the median rate of each pipeline
    repeats = 5
    vec_rates, naive_rates = [], []
    for _ in range(repeats):
        s_vec, cpu_vec = vectorised(work, polls_in, max(2, windows // repeats), polls)
        vec_rates.append(s_vec / cpu_vec)
        s_naive, cpu_naive = naive(work, polls_lists, max(1, windows // repeats // 5), polls)
        naive_rates.append(s_naive / cpu_naive)
    vec_rate, naive_rate = float(np.median(vec_rates)), float(np.median(naive_rates))
    return {
        "workload": f"{work.description}, {polls} polls per window, last+min/max/mean/count per window, "
        "JSON via orjson",
        "samples_per_s": round(vec_rate),
        "samples_per_s_runs": [round(r) for r in vec_rates],
        "naive_samples_per_s": round(naive_rate),
        "naive_samples_per_s_runs": [round(r) for r in naive_rates],
        "ratio": round(vec_rate / naive_rate, 1),
        "same_messages": same_output(vec_msgs, naive_msgs),
        **json_encoders(work, polls_in[:polls]),
    }


def json_encoders(work: Any, polls_in: list[list[Any]]) -> dict[str, Any]:
    """orjson (when installed) against the stdlib encoder on one of our real messages."""
    tags = work.tags
    ring = RingBuffer(len(tags), len(polls_in) * 2)
    red = Reducer(tags, ring, heartbeat=60.0)
    for answers in polls_in:
        b = Batch.empty(len(tags), time.time_ns())
        work.decode(answers, b)
        ring.write(b)
    reduced = red.reduce(0.0)
    assert reduced is not None  # every tag has new samples
    msg = {"seq": 1, "ts": 0, "asset": "bench", "tags": entries(reduced)}
    full, compact = JsonEncoder("full"), JsonEncoder("compact")

    def stdlib(m: Any) -> bytes:
        return json.dumps(m, separators=(",", ":")).encode()

    return {
        "json_stdlib_MB_per_s": _mb_per_s(stdlib, msg),
        "json_fast_MB_per_s": _mb_per_s(lambda m: full.data("bench", 1, 0, reduced), msg),
        "json_compact_MB_per_s": _mb_per_s(lambda m: compact.data("bench", 1, 0, reduced), msg),
    }


def _mb_per_s(fn: Callable[[Any], bytes], msg: Any) -> float:
    size = len(fn(msg))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        fn(msg)
        n += 1
    return round(size * n / (time.perf_counter() - t0) / 1e6, 1)


# -- uplink bytes per sample -------------------------------------------------------------------------------


def _wire(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH with QoS 1 on the wire."""
    return publish_size(topic, len(payload), 1)


def plant_signals(n_tags: int, steps: int, dt: float) -> np.ndarray:
    """Shop-floor-like signals (steps x tags): slow sines with noise, random walks, counters, flat values."""
    rng = np.random.default_rng(1)
    t = np.arange(steps)[:, None] * dt
    kind = np.arange(n_tags) % 4
    sine = 150 + 30 * np.sin(2 * np.pi * t / rng.uniform(20, 120, n_tags)) + rng.normal(0, 0.05, (steps, n_tags))
    walk = 45 + np.cumsum(rng.normal(0, 0.02, (steps, n_tags)), axis=0)
    counter = np.floor(t / 1.5) + rng.integers(0, 1000, n_tags)
    flat = np.broadcast_to(rng.integers(0, 3, n_tags).astype(float), (steps, n_tags))
    return np.round(np.choose(kind, [sine, walk, counter, flat]), 3)


UPLINK_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("rbe (any change)", {}),
    ("rbe deadband_percent 0.5", {"deadband_percent": 0.5}),
    ("aggregate min/max/mean", {"mode": "rbe", "aggregate": ["min", "max", "mean"]}),
    ("lttb points 5", {"mode": "lttb", "points": 5}),
    ("swinging_door deviation 0.5", {"mode": "swinging_door", "deviation": 0.5}),
    ("raw", {"mode": "raw"}),
]


def uplink(quick: bool) -> dict[str, Any]:
    """Bytes per sample on the wire for each setting vs. one JSON message per sample per tag."""
    n_tags, poll, publish = 100, 0.1, 1.0
    seconds = 60 if quick else 300
    steps = int(seconds / poll)
    data = plant_signals(n_tags, steps, poll)
    per = int(publish / poll)
    base_topic = "acme/plant-a/press-shop/line1/press-3/data"
    baseline = 0
    t0_ns = 1_700_000_000_000_000_000
    for k in range(steps):
        ts_ms = (t0_ns + int(k * poll * 1e9)) // 1_000_000
        for i in range(n_tags):
            payload = json.dumps({"ts": ts_ms, "v": float(data[k, i]), "q": "good"}, separators=(",", ":")).encode()
            baseline += _wire(f"acme/plant-a/press-shop/line1/press-3/t{i}", payload)
    samples = steps * n_tags
    result: dict[str, Any] = {"baseline_bytes_per_sample": round(baseline / samples, 2), "settings": {}}
    comps = list(COMPRESSIONS)
    encoder = JsonEncoder()
    for label, reduce in UPLINK_SETTINGS:
        tags = [TagBase(name=f"t{i}", **reduce) for i in range(n_tags)]
        for comp in comps:
            ring = RingBuffer(n_tags, per * 4)
            red = Reducer(tags, ring, heartbeat=60.0)
            total = 0
            for k in range(steps):
                b = Batch.empty(n_tags, t0_ns + int(k * poll * 1e9))
                b.values[:] = data[k]
                ring.write(b)
                if (k + 1) % per == 0:
                    out = red.reduce(k * poll)
                    if out is not None:
                        payload = encoder.data("press-3", k, int(k * poll * 1000), out)
                        total += _wire(*encoder.wire(base_topic, payload, replay=False, compression=comp))
            bps = total / samples
            result["settings"][f"{label} / {comp}"] = {
                "bytes_per_sample": round(bps, 3),
                "ratio": round(bps / (baseline / samples), 4),
            }
    result["workload"] = f"{n_tags} tags, poll {poll:g}s, publish {publish:g}s, {seconds}s of plant-like signals"
    return result


def ring_memory() -> dict[str, Any]:
    """Bytes per buffered sample: what NumPy allocates for a 10 000-tag, 600-slot ring."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ring = RingBuffer(10_000, 600)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    samples = ring.n_tags * ring.capacity
    return {
        "bytes_per_sample": round(ring.nbytes / samples, 2),  # the sample columns
        "allocated_bytes_per_sample": round(used / samples, 2),  # + per-tag bookkeeping, as allocated
        "tags": 10_000,
        "slots": 600,
    }
