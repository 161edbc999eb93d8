"""The JSON payload shapes: compact decodes back to exactly what full says; numbers as the device gives them."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.batch import Batch, Quality
from gateway.config.common import TagBase
from gateway.encoders.json import JsonEncoder, expand, mark_replay
from gateway.reduce import Reducer
from gateway.ringbuffer import RingBuffer

T0 = 1_700_000_000_000_000_000


class IntTag(TagBase):
    type: str = "uint16"


def _reducer(n: int, modes: list[str], aggregate: list[bool], integer: list[bool], polls: list[dict]) -> Reducer:
    tags = [
        (IntTag if integer[i] else TagBase)(
            name=f"t{i}", mode=modes[i], aggregate=["min", "max", "mean"] if aggregate[i] else []
        )
        for i in range(n)
    ]
    ring = RingBuffer(n, 64)
    for p in polls:
        b = Batch.empty(n, 0)
        b.ts[:] = T0 + np.asarray(p["ts"], dtype=np.int64)
        b.values[:] = p["values"]
        b.quality[:] = p["quality"]
        if p.get("errors"):  # bad tags with an error text (a text JSON must escape)
            b.mark_bad(np.flatnonzero(b.quality == Quality.BAD), 2, 'Modbus exception 2 ("illegal data address")')
        ring.write(b)
    return Reducer(tags, ring, heartbeat=60.0)


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 12))
    if draw(st.booleans()):  # the usual profile: every tag rbe with the same aggregates
        modes, aggregate = ["rbe"] * n, [True] * n
    else:
        modes = draw(st.lists(st.sampled_from(["rbe", "rbe", "raw", "lttb"]), min_size=n, max_size=n))
        aggregate = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    integer = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    polls = []
    for _ in range(draw(st.integers(1, 4))):
        spread = draw(st.sampled_from([0, 0, 3_000_000]))  # one timestamp per poll, or a few ms apart per tag
        polls.append(
            {
                "ts": [draw(st.integers(0, spread)) for _ in range(n)],
                "values": [
                    float(draw(st.one_of(st.integers(-70000, 70000), st.sampled_from([2**64 - 2048, -(2**63)]))))
                    if integer[i]
                    else draw(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))))
                    for i in range(n)
                ],
                "quality": [
                    draw(st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD]))
                    for _ in range(n)
                ],
                "errors": draw(st.booleans()),
            }
        )
    return n, modes, aggregate, integer, polls


@settings(max_examples=300, deadline=None)
@given(workloads(), st.sampled_from([0, 0, 2, 5]))
def test_compact_expands_to_the_full_message(work, tolerance_ms):
    n, modes, aggregate, integer, polls = work
    full_r = _reducer(n, modes, aggregate, integer, polls).reduce(0.0)
    compact_r = _reducer(n, modes, aggregate, integer, polls).reduce(0.0)
    full_bytes = JsonEncoder("full").data("a", 7, 123, full_r)
    # the array writer gives byte for byte what the reference (a dict per tag through orjson) gives: plain
    # rows, uniform aggregates, and (the row-piece writer) errors, mixed aggregates and raw / lttb series
    assert full_bytes == JsonEncoder("full").reference("a", 7, 123, full_r)
    full = json.loads(full_bytes)
    compact = json.loads(JsonEncoder("compact", tolerance_ms).data("a", 7, 123, compact_r))
    assert (compact["seq"], compact["asset"]) == (7, "a")
    expanded = expand(compact)["tags"]
    if tolerance_ms == 0:
        assert expanded == full["tags"]
    # a bare value is a good sample taken at the message's ts (within the tolerance) with nothing else to say
    for name, entry in compact["tags"].items():
        f = full["tags"][name]
        bare = not isinstance(entry, dict)
        assert bare == (
            f["q"] == "good" and 0 <= compact["ts"] - f["ts"] <= tolerance_ms and set(f) == {"ts", "v", "q"}
        )
        assert {**expanded[name], "ts": f["ts"]} == f


@settings(max_examples=60, deadline=None)
@given(st.integers(17, 90), st.data())
def test_one_writer_over_successive_large_messages_equals_the_reference(n, data):
    """Messages of many tags (timestamps in runs, one per request, or one per tag; integer and float tags
    mixed; quality all good or not; aggregates of every tag or none) written one after another by one
    encoder, so its kept templates and merges are reused: byte for byte what the reference gives."""
    integer = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    aggregate = data.draw(st.booleans())
    tags = [
        (IntTag if integer[i] else TagBase)(
            name=f"t{i}", aggregate=["min", "max", "mean", "count"] if aggregate else []
        )
        for i in range(n)
    ]
    ring = RingBuffer(n, 16)
    # heartbeat 0: every tag due in every message; 60 s: only the tags whose value changed (rbe), so messages
    # carry a subset of the tags (the usual case in a plant)
    reducer = Reducer(tags, ring, heartbeat=data.draw(st.sampled_from([0.0, 60.0])))
    encoder = JsonEncoder("full")
    previous: list[float] | None = None
    for message in range(3):
        for _ in range(data.draw(st.integers(1, 3))):
            b = Batch.empty(n, 0)
            cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=data.draw(st.sampled_from([2, 8, n])))))
            for k, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, n])):  # one timestamp per "request"
                b.ts[lo:hi] = T0 + 1_000_000 * (10 * message + k)
            values = [
                float(data.draw(st.integers(-70000, 70000))) if integer[i] else data.draw(st.floats(-1e6, 1e6))
                for i in range(n)
            ]
            if previous is not None:  # some tags keep their value
                keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
                values = [p if k else v for v, p, k in zip(values, previous, keep)]
            b.values[:] = previous = values
            if data.draw(st.booleans()):
                b.quality[:] = data.draw(
                    st.lists(st.sampled_from([Quality.GOOD, Quality.UNCERTAIN]), min_size=n, max_size=n)
                )
            ring.write(b)
        r = reducer.reduce(float(message + 1))
        if r is None:  # nothing changed, no heartbeat due: no message (the first one always has every tag)
            assert message > 0
            continue
        assert encoder.data("a", message, 5, r) == encoder.reference("a", message, 5, r)


def test_one_writer_for_several_assets_and_a_reload_that_renames_tags():
    """The writer keeps texts per asset: twenty assets in turn each get their own names, and a reload that
    renames an asset's tags but keeps their number gets the new names (it builds a new reducer)."""
    encoder = JsonEncoder("full")

    def message(asset: str, prefix: str, n: int = 5) -> tuple[bytes, bytes]:
        ring = RingBuffer(n, 4)
        b = Batch.empty(n, T0)
        b.values[:] = np.arange(n)
        ring.write(b)
        r = Reducer([TagBase(name=f"{prefix}{i}") for i in range(n)], ring, heartbeat=0.0).reduce(1.0)
        return encoder.data(asset, 1, 5, r), encoder.reference(asset, 1, 5, r)

    for k in range(20):
        got, want = message(f"asset-{k}", f"k{k}_")
        assert got == want
    got, want = message("asset-3", "renamed_")
    assert got == want and b'"renamed_0"' in got


def test_compact_is_small_and_integers_are_integers():
    n = 100
    r = _reducer(
        n,
        ["rbe"] * n,
        [False] * n,
        [True] * n,
        [{"ts": [0] * n, "values": [54321.0] * n, "quality": [Quality.GOOD] * n}],
    ).reduce(0.0)
    compact = JsonEncoder("compact").data("press", 1, 0, r)
    full = JsonEncoder("full").data("press", 1, 0, r)
    assert b'"t0":54321,' in compact and b'"v":54321,' in full and b"54321.0" not in full
    assert len(compact) / n < 13 < 40 < len(full) / n  # '"t42":54321,' against '"t42":{"ts":...,"v":54321,"q":"good"},'


def test_nan_is_null_and_a_replayed_compact_message_is_marked():
    r = _reducer(
        2,
        ["rbe"] * 2,
        [False] * 2,
        [False] * 2,
        [{"ts": [0, 0], "values": [float("nan"), 1.5], "quality": [Quality.BAD, Quality.GOOD]}],
    ).reduce(0.0)
    body = JsonEncoder("compact").data("a", 3, 0, r)
    msg = json.loads(mark_replay(body))
    assert msg["replay"] is True and msg["tags"]["t1"] == 1.5
    assert msg["tags"]["t0"]["v"] is None and msg["tags"]["t0"]["q"] == "bad"
