"""Reduction algorithms a user selects per tag or per uplink profile, and the compact encodings."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from gateway.encoders.json import tags_object
from gateway.batch import Batch, Quality
from gateway.config.common import ReduceProfile, TagBase
from gateway.encoders import decode
from gateway.encoders.json import JsonEncoder
from gateway.lttb import lttb_indices
from gateway.reduce import Reducer, json_number, json_numbers
from gateway.ringbuffer import RingBuffer
from gateway.swinging_door import SwingingDoor

S = 1_000_000_000


def write(ring, values, ts_s, quality=None):
    b = Batch.empty(len(values), int(ts_s * S))
    b.values[:] = values
    if quality is not None:
        b.quality[:] = quality
    ring.write(b)


def test_percent_deadband_is_relative_to_the_last_value_sent():
    ring = RingBuffer(1, 16)
    red = Reducer([TagBase(name="p", deadband_percent=1.0)], ring, heartbeat=60)
    write(ring, [200.0], 0)
    assert tags_object(red.reduce(0.0))
    write(ring, [201.9], 1)  # 0.95 % of 200
    assert tags_object(red.reduce(1.0)) == {}
    write(ring, [202.1], 2)  # 1.05 %
    assert tags_object(red.reduce(2.0))["p"]["v"] == 202.1


def test_lttb_keeps_first_last_and_the_peak():
    t = np.arange(100, dtype=float)[None, :]
    v = np.zeros((1, 100))
    v[0, 37] = 50.0
    idx = lttb_indices(t, v, 5)[0].tolist()
    assert idx[0] == 0 and idx[-1] == 99 and 37 in idx and len(idx) == 5


def test_lttb_mode_sends_points_samples_per_window():
    ring = RingBuffer(2, 64)
    red = Reducer([TagBase(name="a", mode="lttb", points=4), TagBase(name="b")], ring, heartbeat=60)
    for k in range(20):
        write(ring, [float(k % 7), 1.0], k)
    out = tags_object(red.reduce(0.0))
    series = out["a"]["lttb"]
    assert len(series["v"]) == 4 and series["ts"][0] == 0 and series["ts"][-1] == 19000
    assert "lttb" not in out["b"]


def test_swinging_door_keeps_a_straight_line_to_its_ends_and_every_corner():
    sd = SwingingDoor(np.array([0.1]), np.array([1e9]))
    ts = (np.arange(21) * S)[None, :]
    v = np.concatenate([np.arange(11.0), 10.0 - np.arange(1.0, 11.0)])[None, :]  # up 0..10, down to 0
    arch = sd.feed(np.array([0]), ts, v, np.zeros_like(v, dtype=np.uint8), np.array([21]))
    assert (arch.ts // S).tolist() == [0, 10]  # the last point (20) is still pending: the door is open
    arch = sd.feed(np.array([0]), np.array([[21 * S]]), np.array([[5.0]]), np.zeros((1, 1), np.uint8), np.array([1]))
    assert (arch.ts // S).tolist() == [20]  # a jump closes the door: the previous corner is archived


def test_swinging_door_max_time_and_quality_change():
    ring = RingBuffer(1, 64)
    red = Reducer([TagBase(name="x", mode="swinging_door", deviation=1.0, heartbeat=5)], ring, heartbeat=60)
    for k in range(4):
        write(ring, [3.0], k)
    assert tags_object(red.reduce(0.0))["x"]["swinging_door"]["ts"] == [0]
    for k in range(4, 7):
        write(ring, [3.0], k)
    assert tags_object(red.reduce(1.0))["x"]["swinging_door"]["ts"] == [5000]  # max time 5 s
    write(ring, [np.nan], 7, quality=[Quality.BAD])
    sdt = tags_object(red.reduce(2.0))["x"]["swinging_door"]
    assert sdt["ts"] == [6000, 7000] and sdt["q"] == ["good", "bad"] and sdt["v"][1] is None


def test_uplink_profile_fills_only_what_the_tag_leaves_unset():
    ring = RingBuffer(2, 16)
    profile = ReduceProfile(deadband=5.0, aggregate=["max"])
    red = Reducer(
        [TagBase(name="a"), TagBase(name="b", deadband=0.0, aggregate=[])], ring, heartbeat=60, profile=profile
    )
    write(ring, [1.0, 1.0], 0)
    tags_object(red.reduce(0.0))
    write(ring, [2.0, 2.0], 1)
    out = tags_object(red.reduce(1.0))
    assert out["a"]["max"] == 2.0 and out["a"]["n"] == 1  # profile aggregate; always sent with new samples
    assert out["b"] == {"ts": 1000, "v": 2.0, "q": "good"}  # the tag's own deadband 0 and no aggregates


@pytest.mark.parametrize("x", [451 * 0.1, 3 * 0.1, -1234.5678, 1e-3 * 7, 123456789.123, 0.0, 1e20])
def test_vectorised_json_numbers_match_the_scalar_rule(x):
    assert json_numbers(np.array([x]))[0] == json_number(x)


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_compressed_payloads_are_flagged_in_the_topic_and_decode(compression):
    msg = {"seq": 1, "ts": 5, "asset": "a", "tags": {"t": {"ts": 5, "v": 1.5, "q": "good"}}}
    body = json.dumps(msg, separators=(",", ":")).encode()
    topic, payload = JsonEncoder().wire("ns/a/data", body, replay=False, compression=compression)
    assert topic == "ns/a/data" + ("" if compression == "none" else f"/{compression}")
    assert decode(payload, topic) == msg
    if compression == "zlib":
        assert zlib.decompress(payload).startswith(b'{"seq":1')


def test_the_last_message_of_an_asset_that_has_no_value_yet_is_empty_not_a_crash():
    """The retained ``last`` message is built when the uplink connects, maybe before the first poll of a device
    that is still down: no tag has a value yet, and that must give an empty snapshot, not stop the publisher."""
    from gateway.reduce import float32_numbers, snapshot

    assert json_numbers(np.empty(0)).shape == (0,) and float32_numbers(np.empty(0)).shape == (0,)
    ring = RingBuffer(2, 8)
    snap = snapshot(ring, ["a", "b"], np.array([True, False]), np.zeros(2, dtype=bool))
    assert len(snap.rows) == 0
    assert json.loads(JsonEncoder().data("press-1", 0, 0, snap))["tags"] == {}
