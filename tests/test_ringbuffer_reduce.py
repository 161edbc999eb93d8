"""Ring buffer and reduction: what the publisher sends, computed from what the drivers wrote."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.encoders.json import tags_object
from gateway.batch import Batch, Quality
from gateway.config.common import TagBase
from gateway.reduce import Reducer
from gateway.ringbuffer import BYTES_PER_SAMPLE, RingBuffer

S = 1_000_000_000


def batch(values, ts_s=0.0, quality=None, index=None) -> Batch:
    values = np.asarray(values, dtype=np.float64)
    b = Batch.empty(len(values), int(ts_s * S))
    b.values[:] = values
    if quality is not None:
        b.quality[:] = quality
    if index is not None:
        b.index = np.asarray(index)
    return b


def test_ring_keeps_newest_and_windows_in_time_order():
    ring = RingBuffer(n_tags=2, capacity=4)
    for k in range(6):
        ring.write(batch([k, 10 * k], ts_s=k))
    ts, v, q, has = ring.last()
    assert v.tolist() == [5.0, 50.0] and has.all()
    w = ring.window(1, since_ns=3 * S)
    assert w.values.tolist() == [30.0, 40.0, 50.0]  # only 4 slots: 2..5 kept, 3..5 in the window
    assert (w.ts // S).tolist() == [3, 4, 5]
    assert ring.nbytes == 2 * 4 * BYTES_PER_SAMPLE


def test_partial_batches_write_only_their_tags():
    ring = RingBuffer(n_tags=3, capacity=8)
    ring.write(batch([1, 2, 3]))
    ring.write(batch([9], ts_s=1, index=[2]))
    assert ring.head.tolist() == [1, 1, 2]
    assert ring.last()[1].tolist() == [1.0, 2.0, 9.0]


def test_pending_returns_samples_since_cursor_capped_at_capacity():
    ring = RingBuffer(n_tags=2, capacity=3)
    cursor = np.zeros(2, dtype=np.int64)
    for k in range(5):
        ring.write(batch([k, k], ts_s=k))
    ts, v, q, count = ring.pending(np.array([0, 1]), cursor)
    assert count.tolist() == [3, 3]  # two samples were overwritten before anyone read them
    assert v[0].tolist() == [2.0, 3.0, 4.0]


def test_pending_views_are_the_same_samples_as_the_copies_and_only_where_the_slots_do_not_wrap():
    ring = RingBuffer(n_tags=2, capacity=4)
    rows = np.array([0, 1])
    for k in range(7):
        ring.write(batch([k, 10 * k], ts_s=k))
        cursor = np.maximum(ring.head - 3, 0)
        copied, viewed = ring.pending(rows, cursor), ring.pending(rows, cursor, copy=False)
        for a, b in zip(copied, viewed):
            assert a.tolist() == b.tolist()
        wraps = (int(ring.head[0]) - int(viewed[3][0])) % 4 + int(viewed[3][0]) > 4
        assert np.shares_memory(viewed[1], ring.values) == (not wraps)
        assert not np.shares_memory(copied[1], ring.values)


def test_report_by_exception_with_deadband_and_heartbeat():
    ring = RingBuffer(2, 16)
    red = Reducer([TagBase(name="a", deadband=0.5), TagBase(name="b", heartbeat=10)], ring, heartbeat=60)
    ring.write(batch([1.0, 5.0]))
    assert set(tags_object(red.reduce(now=0.0))) == {"a", "b"}  # first value is always sent
    ring.write(batch([1.4, 5.0], ts_s=1))
    assert tags_object(red.reduce(now=1.0)) == {}  # a moved 0.4 <= deadband, b unchanged
    ring.write(batch([1.6, 5.0], ts_s=2))
    out = tags_object(red.reduce(now=2.0))
    assert list(out) == ["a"] and out["a"]["v"] == 1.6  # 0.6 from the last SENT value (1.0)
    ring.write(batch([1.7, 5.0], ts_s=3))
    assert tags_object(red.reduce(now=10.5)) == {"b": {"ts": 3000, "v": 5.0, "q": "good"}}  # heartbeat of b only


def test_quality_change_is_sent_with_error_text():
    ring = RingBuffer(1, 8)
    red = Reducer([TagBase(name="a", deadband=100)], ring, heartbeat=60)
    ring.write(batch([1.0]))
    tags_object(red.reduce(0.0))
    bad = Batch.all_bad(1, 5 * S, 2, "Modbus exception 2 (illegal data address)")
    ring.write(bad)
    out = tags_object(red.reduce(1.0))
    assert out == {"a": {"ts": 5000, "v": None, "q": "bad", "err": "Modbus exception 2 (illegal data address)"}}


def test_aggregates_over_good_samples_of_the_window():
    ring = RingBuffer(1, 64)
    red = Reducer([TagBase(name="p", aggregate=["min", "max", "mean"])], ring, heartbeat=60)
    for k, x in enumerate([3.0, 1.0, 2.0, 6.0]):
        ring.write(batch([x], ts_s=k))
    ring.write(batch([100.0], ts_s=5, quality=[Quality.BAD]))
    out = tags_object(red.reduce(0.0))["p"]
    assert (out["min"], out["max"], out["mean"], out["n"]) == (1.0, 6.0, 3.0, 4)
    ring.write(batch([7.0], ts_s=6))
    out = tags_object(red.reduce(1.0))["p"]
    assert (out["min"], out["max"], out["n"], out["v"]) == (7.0, 7.0, 1, 7.0)
    assert tags_object(red.reduce(2.0)) == {}  # no new samples: nothing to aggregate


def test_raw_mode_sends_every_sample_of_the_window():
    ring = RingBuffer(1, 64)
    red = Reducer([TagBase(name="v", mode="raw")], ring, heartbeat=60)
    for k in range(3):
        ring.write(batch([float(k)], ts_s=k))
    raw = tags_object(red.reduce(0.0))["v"]["raw"]
    assert raw == {"ts": [0, 1000, 2000], "v": [0.0, 1.0, 2.0], "q": ["good"] * 3}


def test_float32_values_published_without_float64_noise():
    ring = RingBuffer(1, 8)
    red = Reducer([TagBase(name="f")], ring, heartbeat=60, float32=np.array([True]))
    ring.write(batch([float(np.float32(123.4))]))
    assert tags_object(red.reduce(0.0))["f"]["v"] == 123.4


@pytest.mark.parametrize("scaled", [451 * 0.1, 3 * 0.1])
def test_scaled_values_published_without_float64_noise(scaled):
    ring = RingBuffer(1, 8)
    red = Reducer([TagBase(name="x")], ring, heartbeat=60)
    ring.write(batch([scaled]))
    assert tags_object(red.reduce(0.0))["x"]["v"] == float(f"{scaled:.10f}")


def test_strings_sent_on_change_only():
    ring = RingBuffer(1, 8)
    red = Reducer([TagBase(name="recipe")], ring, heartbeat=60)
    b = batch([np.nan])
    b.strings = {0: "RCP-0042"}
    ring.write(b)
    assert tags_object(red.reduce(0.0))["recipe"]["v"] == "RCP-0042"
    b = batch([np.nan], ts_s=1)
    b.strings = {0: "RCP-0042"}
    ring.write(b)
    assert tags_object(red.reduce(1.0)) == {}
    b = batch([np.nan], ts_s=2)
    b.strings = {0: "RCP-0043"}
    ring.write(b)
    assert tags_object(red.reduce(2.0))["recipe"]["v"] == "RCP-0043"


def test_a_bad_string_tag_publishes_no_stale_text():
    ring = RingBuffer(1, 8)
    red = Reducer([TagBase(name="recipe")], ring, heartbeat=60)
    b = batch([np.nan])
    b.strings = {0: "RCP-0042"}
    ring.write(b)
    tags_object(red.reduce(0.0))
    ring.write(Batch.all_bad(1, 2 * S, -1, "disconnected: timed out"))
    assert tags_object(red.reduce(1.0))["recipe"] == {
        "ts": 2000,
        "v": None,
        "q": "bad",
        "err": "disconnected: timed out",
    }


def test_float32_aggregates_have_float32_precision_like_the_value():
    ring = RingBuffer(1, 8)
    red = Reducer([TagBase(name="p", aggregate=["min", "max", "mean"])], ring, heartbeat=60, float32=np.array([True]))
    for x in (166.64377, 173.91115):
        ring.write(batch([float(np.float32(x))]))
    out = tags_object(red.reduce(0.0))["p"]
    assert (out["v"], out["min"], out["max"]) == (173.91115, 166.64377, 173.91115)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_ring_memory_becomes_resident_only_as_slots_are_written():
    """What bench's "RSS beyond the rings" relies on: a new ring costs (almost) no RAM until it is written;
    its three columns are one zeroed block the OS maps lazily (the quality column of a 200-tag asset was a
    heap block of 120 KB, resident at once)."""
    import mmap

    def memory_of(a: np.ndarray) -> object:
        while isinstance(a, np.ndarray) and a.base is not None:
            a = a.base
        return a.obj if isinstance(a, memoryview) else a

    ring = RingBuffer(200, 600)
    # structure first (the RSS figures below depend on what the process did before, i.e. the test order): the
    # three columns are views of one anonymous mapping, whose pages the OS zero-fills on first touch
    assert isinstance(memory_of(ring.ts), mmap.mmap)
    assert memory_of(ring.ts) is memory_of(ring.values) is memory_of(ring.quality)
    before = _rss_kib()
    rings = [RingBuffer.for_rate(200, 600, 1.0) for _ in range(20)]
    allocated = sum(r.nbytes for r in rings) // 1024
    assert _rss_kib() - before < allocated // 20
    for ring in rings:
        for _ in range(ring.capacity):
            ring.write(batch(np.ones(200)))
    assert _rss_kib() - before > allocated * 9 // 10
    assert rings[0].last()[1][3] == 1.0
