"""In-process figures: the vectorised hot path against a naive per-sample pipeline, uplink bytes per
sample for each reduction/encoding setting, and memory per buffered sample.

The workload is one Modbus device of ``n_tags`` tags of mixed types and byte orders (a register image
read in requests of up to 125 registers), polled ``polls_per_window`` times per publish window, every
tag reduced to last value + min/max/mean/count per window and encoded as the gateway's JSON message.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from typing import Any, Callable

import numpy as np

from drivers.modbus.base import ModbusDriverBase
from drivers.modbus.config import ModbusTag
from drivers.modbus.plan import compile_plan
from gateway.batch import Batch
from gateway.config.common import TagBase
from gateway.encoders import COMPRESSIONS
from gateway.encoders.json import JsonEncoder, entries
from gateway.reduce import Reducer
from gateway.uplink.links import publish_size
from gateway.ringbuffer import RingBuffer

_TYPES = [("float32", "ABCD"), ("float32", "CDAB"), ("int16", "ABCD"), ("uint16", "BADC"),
          ("int32", "CDAB"), ("uint32", "DCBA"), ("float64", "ABCD"), ("int16", "ABCD")]
_WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
_FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}


def make_tags(n: int, **reduce: Any) -> list[ModbusTag]:
    tags, addr = [], 0
    for i in range(n):
        typ, order = _TYPES[i % len(_TYPES)]
        scale = 0.1 if typ == "int16" and i % 2 else 1.0
        tags.append(ModbusTag(name=f"t{i}", address=f"hr:{addr}", type=typ, byte_order=order, scale=scale, **reduce))
        addr += _WORDS[typ]
    return tags


def register_image(tags: list[ModbusTag], step: int) -> np.ndarray:
    """A register image whose values move a little every poll (float noise, integer counters)."""
    words = sum(_WORDS[t.type] for t in tags)
    img = np.empty(words, dtype=np.uint16)
    pos = 0
    rng = np.random.default_rng(step)
    for i, t in enumerate(tags):
        n = _WORDS[t.type]
        x = 100 + 10 * np.sin(step / 20 + i) + rng.normal(0, 0.05)
        v = x if t.type.startswith("float") else int(x) % 30000
        raw = struct.pack(">" + _FMT[t.type], v)
        w = list(struct.unpack(f">{n}H", raw))
        if t.byte_order in ("CDAB", "DCBA"):
            w = w[::-1]
        if t.byte_order in ("BADC", "DCBA"):
            w = [((x & 0xFF) << 8) | (x >> 8) for x in w]
        img[pos:pos + n] = w
        pos += n
    return img


class _Response:
    """What the driver gets from pymodbus for one read: the registers of the answer."""

    __slots__ = ("registers",)

    def __init__(self, registers: Any) -> None:
        self.registers = registers

    def isError(self) -> bool:  # pymodbus's name
        return False


def responses(plan: Any, image: np.ndarray, as_list: bool = False) -> list[_Response]:
    """One poll's answers: as the gateway's Modbus driver receives them (a big-endian uint16 view of each
    response frame, see drivers.modbus.base), or as pymodbus hands them to a plain program (lists of ints)."""
    if as_list:
        return [_Response(image[r.start:r.start + r.count].tolist()) for r in plan.requests]
    return [_Response(np.frombuffer(b"\x00" + image[r.start:r.start + r.count].astype(">u2").tobytes(), ">u2",
                                    offset=1)) for r in plan.requests]


def vectorised(tags: list[ModbusTag], polls_in: list[list[_Response]], windows: int, polls: int,
               plan: Any = None, messages: list[bytes] | None = None) -> tuple[int, float]:
    """decode -> ring buffer -> reduce -> encode, the gateway's own code (the Modbus driver's decoding of
    a poll's answers, the ring, the reducer, the encoder). Returns (samples, cpu seconds)."""
    plan = plan or compile_plan(tags, max_registers_per_read=125, max_bits_per_read=2000, max_gap=0)
    ring = RingBuffer(len(tags), polls * 4)
    red = Reducer(tags, ring, heartbeat=60.0, float32=np.array([t.type == "float32" for t in tags]))
    words = np.zeros(plan.register_words, dtype=np.uint16)
    n = len(tags)
    t0 = time.process_time()
    seq = 0
    encoder = JsonEncoder()
    for w in range(windows):
        for p in range(polls):
            answers = polls_in[(w * polls + p) % len(polls_in)]
            batch = Batch.empty(n, 0)
            batch.ts[:] = time.time_ns()
            ModbusDriverBase.decode_answers(plan, answers, batch, words)
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


def naive(tags: list[ModbusTag], polls_in: list[list[_Response]], windows: int, polls: int,
          messages: list[bytes] | None = None) -> tuple[int, float]:
    """The same work one Python object at a time: struct per tag, a dict per sample, lists as buffers, the
    same published numbers (float32 tags at float32 precision, others at 15 digits) and the same message."""
    layout, pos = [], 0
    for t in tags:
        n = _WORDS[t.type]
        publish = _shortest_f32 if t.type == "float32" else _json_number
        layout.append((t.name, pos, n, ">" + _FMT[t.type], f">{n}H", t.byte_order, t.scale, t.offset, publish))
        pos += n
    history: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tags}
    publishers = {t.name: (_shortest_f32 if t.type == "float32" else _json_number) for t in tags}
    means = dict(publishers)
    for t in tags:  # integer tags without scaling are published as JSON integers (their mean is not)
        if t.type in ("int16", "uint16", "int32", "uint32") and t.scale == 1 and t.offset == 0:
            publishers[t.name] = int
    t0 = time.process_time()
    seq = 0
    for w in range(windows):
        for p in range(polls):
            regs = [x for r in polls_in[(w * polls + p) % len(polls_in)] for x in r.registers]
            now = time.time_ns()
            for name, at, n, fmt, words_fmt, order, scale, offset, _ in layout:
                words = regs[at:at + n]
                if order in ("CDAB", "DCBA"):
                    words = words[::-1]
                if order in ("BADC", "DCBA"):
                    words = [((x & 0xFF) << 8) | (x >> 8) for x in words]
                value = struct.unpack(fmt, struct.pack(words_fmt, *words))[0] * scale + offset
                history[name].append({"ts": now, "value": value, "quality": "good"})
        out = {}
        for name, samples in history.items():
            pub = publishers[name]
            vals = [s["value"] for s in samples if s["quality"] == "good"]
            last = samples[-1]
            out[name] = {"ts": last["ts"] // 1_000_000, "v": pub(last["value"]), "q": last["quality"],
                         "min": pub(min(vals)), "max": pub(max(vals)), "mean": means[name](sum(vals) / len(vals)),
                         "n": len(vals)}
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
    tags = make_tags(n_tags, aggregate=["min", "max", "mean", "count"])
    images = [register_image(tags, s) for s in range(polls * 2)]
    plan = compile_plan(tags, max_registers_per_read=125, max_bits_per_read=2000, max_gap=0)
    polls_in = [responses(plan, img) for img in images]
    polls_lists = [responses(plan, img, as_list=True) for img in images]
    vec_msgs: list[bytes] = []
    naive_msgs: list[bytes] = []
    vectorised(tags, polls_in, 2, polls, plan, vec_msgs)  # warm up, and the messages to compare
    naive(tags, polls_lists, 2, polls, naive_msgs)
    # the machine may be shared: several short runs, interleaved, and the median rate of each pipeline
    repeats = 5
    vec_rates, naive_rates = [], []
    for _ in range(repeats):
        s_vec, cpu_vec = vectorised(tags, polls_in, max(2, windows // repeats), polls, plan)
        vec_rates.append(s_vec / cpu_vec)
        s_naive, cpu_naive = naive(tags, polls_lists, max(1, windows // repeats // 5), polls)
        naive_rates.append(s_naive / cpu_naive)
    vec_rate, naive_rate = float(np.median(vec_rates)), float(np.median(naive_rates))
    return {
        "workload": f"{n_tags} Modbus tags (8 type/byte-order mixes), {polls} polls per window, "
                    "last+min/max/mean/count per window, JSON via orjson",
        "samples_per_s": round(vec_rate),
        "samples_per_s_runs": [round(r) for r in vec_rates],
        "naive_samples_per_s": round(naive_rate),
        "naive_samples_per_s_runs": [round(r) for r in naive_rates],
        "ratio": round(vec_rate / naive_rate, 1),
        "same_messages": same_output(vec_msgs, naive_msgs),
        **json_encoders(tags, images, polls),
    }


def json_encoders(tags, images, polls) -> dict[str, Any]:
    """orjson (when installed) against the stdlib encoder on one of our real messages."""
    ring = RingBuffer(len(tags), polls * 2)
    red = Reducer(tags, ring, heartbeat=60.0)
    plan = compile_plan(tags, max_registers_per_read=125, max_bits_per_read=2000, max_gap=0)
    for p in range(polls):
        b = Batch.empty(len(tags), time.time_ns())
        ModbusDriverBase.decode_answers(plan, responses(plan, images[p]), b)
        ring.write(b)
    reduced = red.reduce(0.0)
    msg = {"seq": 1, "ts": 0, "asset": "bench", "tags": entries(reduced)}
    full, compact = JsonEncoder("full"), JsonEncoder("compact")

    def stdlib(m: Any) -> bytes:
        return json.dumps(m, separators=(",", ":")).encode()

    return {"json_stdlib_MB_per_s": _mb_per_s(stdlib, msg),
            "json_fast_MB_per_s": _mb_per_s(lambda m: full.data("bench", 1, 0, reduced), msg),
            "json_compact_MB_per_s": _mb_per_s(lambda m: compact.data("bench", 1, 0, reduced), msg)}


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
                "bytes_per_sample": round(bps, 3), "ratio": round(bps / (baseline / samples), 4)}
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
    return {"bytes_per_sample": round(ring.nbytes / samples, 2),  # the sample columns
            "allocated_bytes_per_sample": round(used / samples, 2),  # + per-tag bookkeeping, as allocated
            "tags": 10_000, "slots": 600}
