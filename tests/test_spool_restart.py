"""Drops and gaps stay exact across restarts: drop counters persisted with the head, the seq gap starting after
the last number used, missing segments counted once, resync work linear in the damaged length.

A crash is a real child process killed with SIGKILL where the timing matters; where it does not, a spool is
abandoned without ``close()`` (its descriptors closed as the kernel would), which leaves the files exactly as
a kill at that point would."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gateway import seq as seq_module
from gateway.seq import SeqCounter
from gateway.spool import Spool, SpoolRecord, decode_records, encode_record

ROOT = Path(__file__).resolve().parents[1]


def _recs(n, start=1, size=100, samples=3):
    return [SpoolRecord(i, "ns/a/data", b"x" * size, samples, i) for i in range(start, start + n)]


def _abandon(s: Spool) -> None:
    """What a SIGKILL leaves: nothing more is written, the descriptors (and the lock) are released."""
    for fd in (s._fd, s._head_fd, getattr(s, "_index_fd", -1), s._lock_fd):
        if fd >= 0:
            os.close(fd)


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env, cwd=ROOT)


# A spool writer that works like the delivery's I/O thread during an outage: batches appended, then commit.
_WRITER = """
import sys
from gateway.spool import Spool, SpoolRecord
s = Spool(sys.argv[1], max_bytes=int(sys.argv[2]), policy="drop_oldest", segment_bytes=4096)
s.open()
print("ready", flush=True)
seq = s.last_seq
while True:
    batch = [SpoolRecord(q, "ns/a/data", b"x" * 100, 3, q) for q in range(seq + 1, seq + 8)]
    seq += len(batch)
    s.append(batch)
    s.commit()
"""


def test_drop_counters_survive_sigkill_at_any_point(tmp_path):
    """Five kills at random moments while the full spool drops the oldest: every record ever appended is
    either held or counted as dropped, exactly (nothing counted twice, nothing forgotten)."""
    rnd = random.Random(9)
    size = len(encode_record(_recs(1)[0]))
    quota = size * 40
    for _ in range(5):
        child = _child(_WRITER, str(tmp_path), str(quota))
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rnd.uniform(0.05, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        s = Spool(tmp_path, max_bytes=quota, segment_bytes=4096)
        s.open()
        try:
            assert s.last_seq > 40
            assert s.messages + s.dropped_messages == s.last_seq
            assert s.samples + s.dropped_samples == 3 * s.last_seq
            assert s.dropped_by_reason()["full"] == {"messages": s.dropped_messages, "samples": s.dropped_samples}
            assert [r.seq for _, r in s.take(1000)] == list(range(s.dropped_messages + 1, s.last_seq + 1))
        finally:
            s.requeue()
            s.close()


def test_records_dropped_behind_one_in_flight_stay_dropped_after_a_crash(tmp_path):
    """The head cannot pass a record still in flight, so records dropped after it are marked in place: after
    a crash they neither come back nor get counted again."""
    size = len(encode_record(_recs(1)[0]))
    s = Spool(tmp_path, max_bytes=size * 10)
    s.open()
    s.append(_recs(10))
    in_flight = s.take(3)
    s.append(_recs(5, start=11))  # 4..8 dropped, 1..3 still in flight
    s.commit()
    assert s.dropped_messages == 5
    _abandon(s)
    s = Spool(tmp_path, max_bytes=size * 10)
    s.open()
    assert s.dropped_messages == 5 and s.messages == 10
    assert [r.seq for _, r in s.take(100)] == [1, 2, 3, *range(9, 16)]
    s.append(_recs(2, start=16))  # dropping goes on from the right place: 1 and 2 go
    assert s.dropped_messages == 7 and s.messages == 10
    assert [p for p, _ in in_flight]  # positions were handed out before the crash
    s.close()


def test_an_oversize_message_is_counted_under_its_own_reason_and_kept_across_restarts(tmp_path):
    s = Spool(tmp_path, max_bytes=64 * 1024)
    s.open()
    s.append([SpoolRecord(1, "t", b"x" * 70_000, 5, 1), *_recs(2, start=2)])
    s.close()
    s = Spool(tmp_path, max_bytes=64 * 1024)
    s.open()
    assert s.dropped_by_reason()["oversize"] == {"messages": 1, "samples": 5}
    assert s.dropped_messages == 1 and s.messages == 2
    s.close()


def test_a_head_file_of_the_previous_format_is_read(tmp_path):
    import struct
    import zlib

    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()
    placed = s.append(_recs(10))
    s.close()
    head = placed[4][1]  # records 1..4 acknowledged by a gateway of the previous version
    (tmp_path / "head").write_bytes(struct.pack("<QI", head, zlib.crc32(struct.pack("<Q", head))))
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()
    assert [r.seq for _, r in s.take(100)] == list(range(5, 11)) and s.dropped_messages == 0
    s.close()


# ------------------------------------------------------------------------------------ missing segments


def _segmented(tmp_path, n=200):
    s = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    s.open()
    s.append(_recs(n))
    return s


def _lost_lines(caplog):
    return [r for r in caplog.records if r.name == "gateway.spool" and "lost" in r.getMessage()]


def test_a_deleted_middle_segment_is_counted_once_with_its_seq_range(tmp_path, caplog):
    s = _segmented(tmp_path)
    s.close()
    segs = sorted(tmp_path.glob("*.seg"))
    middle = segs[3]
    gone = [rec.seq for _, _, rec in decode_records(middle.read_bytes()).records]
    middle.unlink()
    caplog.set_level(logging.WARNING, "gateway.spool")
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()
    assert s.lost_messages == len(gone) == s.dropped_messages and s.lost_samples == 3 * len(gone)
    assert s.lost_segments == 1 and s.lost_ranges == [(gone[0], gone[-1])]
    assert s.dropped_by_reason()["lost"] == {"messages": len(gone), "samples": 3 * len(gone)}
    assert [r.seq for _, r in s.take(1000)] == [q for q in range(1, 201) if q not in gone]
    lines = _lost_lines(caplog)
    assert len(lines) == 1 and f"{gone[0]}..{gone[-1]}" in lines[0].getMessage()
    s.requeue()
    s.close()
    caplog.clear()
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()  # the same hole is not counted or logged again
    assert s.lost_messages == len(gone) and s.lost_segments == 1 and s.messages == 200 - len(gone)
    assert not _lost_lines(caplog)
    s.close()


def test_an_emptied_head_segment_and_a_cut_middle_one_count_exactly_what_was_not_done(tmp_path):
    s = _segmented(tmp_path)
    taken = s.take(45)
    s.ack([p for p, _ in taken])  # 1..45 delivered: the head is inside the second segment
    s.commit()
    s.close()
    segs = sorted(tmp_path.glob("*.seg"))
    head_seg = decode_records(segs[0].read_bytes()).records
    assert head_seg[0][2].seq <= 45 < head_seg[-1][2].seq
    undelivered = [rec.seq for _, _, rec in head_seg if rec.seq > 45]
    segs[0].write_bytes(b"")
    cut = segs[2].read_bytes()
    segs[2].write_bytes(cut[:1000])
    kept = {rec.seq for _, _, rec in decode_records(cut[:1000]).records}
    cut_lost = [rec.seq for _, _, rec in decode_records(cut).records if rec.seq not in kept]
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()
    assert s.lost_messages == len(undelivered) + len(cut_lost)
    assert s.lost_segments == 2
    held = [r.seq for _, r in s.take(1000)]
    assert held == [q for q in range(46, 201) if q not in undelivered and q not in cut_lost]
    s.close()


def test_a_segment_deleted_behind_a_running_spool_is_skipped_and_counted_at_the_next_start(tmp_path):
    s = _segmented(tmp_path)
    first = s.take(10)
    s.ack([p for p, _ in first])
    s.commit()
    _abandon(s)  # crash
    segs = sorted(tmp_path.glob("*.seg"))
    gone = [rec.seq for _, _, rec in decode_records(segs[2].read_bytes()).records]
    segs[2].unlink()
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.open()
    assert s.lost_messages == len(gone) and s.messages == 190 - len(gone)
    s.close()


# ------------------------------------------------------------------------------------------- resync


def test_resync_over_a_damaged_megabyte_examines_each_byte_once(tmp_path):
    """A damaged stretch of 1 MB (every record in it has a flipped byte): the intact records around it are all
    found, the search for the next record never goes back, and CRCs run only over the candidates themselves."""
    recs = _recs(20_000, size=80)
    encoded = [encode_record(r) for r in recs]
    buf = bytearray(b"".join(encoded))
    pos, damaged, lo, hi = 0, set(), 200_000, 1_200_000
    stretch = 0
    for r, e in zip(recs, encoded, strict=True):
        if lo <= pos < hi:
            buf[pos + 20] ^= 0xFF
            damaged.add(r.seq)
            stretch += len(e)
        pos += len(e)
    d = decode_records(bytes(buf))
    assert stretch >= 1_000_000
    assert [r.seq for _, _, r in d.records] == [r.seq for r in recs if r.seq not in damaged]
    assert d.damaged_records == 1 and d.damaged_bytes == stretch
    assert d.searched_bytes == stretch  # every damaged byte searched once, nothing searched twice
    assert d.crc_checks == len(recs)  # one CRC per record header found, intact or not
    assert d.crc_bytes <= len(buf)


def test_no_single_damaged_byte_of_a_magic_turns_a_held_record_into_a_dropped_one():
    """The in-place drop mark differs from the magic in every byte: one damaged byte is damage, counted."""
    recs = _recs(3)
    buf = b"".join(encode_record(r) for r in recs)
    second = len(encode_record(recs[0]))
    for k in range(4):
        for x in range(1, 256):
            bad = bytearray(buf)
            bad[second + k] ^= x
            d = decode_records(bytes(bad))
            assert not d.dropped and d.damaged_records == 1
            assert [r.seq for _, _, r in d.records] == [1, 3]


def test_a_spool_with_a_damaged_megabyte_opens_with_every_intact_record(tmp_path):
    s = Spool(tmp_path, max_bytes=1 << 24, segment_bytes=4 << 20)
    s.open()
    placed = s.append(_recs(20_000, size=80))
    s.close()
    untouched = [rec.seq for rec, a, b in placed if b <= 100_000 or a >= 1_100_000]
    seg = min(tmp_path.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[100_000:1_100_000] = random.Random(1).randbytes(1_000_000)
    seg.write_bytes(bytes(data))
    s = Spool(tmp_path, max_bytes=1 << 24)
    s.open()
    assert s.damaged_records == 1 and 1_000_000 <= s.damaged_bytes < 1_000_000 + 200
    assert [r.seq for _, r in s.take(100_000)] == untouched
    s.close()


# ---------------------------------------------------------------------------------------------- seq

_TAKER = """
import asyncio, os, signal, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from gateway.seq import SeqCounter

async def main():
    c = SeqCounter(Path(sys.argv[1]))
    c.open(int(sys.argv[3]))
    io = ThreadPoolExecutor(1)
    for _ in range(int(sys.argv[2])):
        c.take(io)
    await asyncio.sleep(0.1)  # let a reservation in the I/O thread finish
    print(c.next - 1, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.parametrize("taken", [1, 499, 1234])
def test_seq_gap_after_sigkill_starts_after_the_last_number_used(tmp_path, taken):
    """Numbers handed out and then lost with the process were used: the gap reported as 'never used' starts
    after the last one, and numbering continues after the reservation (never reusing one)."""
    child = _child(_TAKER, str(tmp_path / "seq"), str(taken), "0")
    last = int(child.stdout.readline())
    assert child.wait() == -signal.SIGKILL and last == taken
    c = SeqCounter(tmp_path / "seq")
    c.open(0)
    assert c.gap == (taken + 1, c.next - 1) and c.next > taken and c.unsure is None
    assert c.last_used == taken
    c.close()
    again = SeqCounter(tmp_path / "seq")
    again.open(0)  # a clean stop in between: no gap
    assert again.gap is None and again.next == c.next
    again.close()


def test_seq_gap_starts_above_the_spool_floor(tmp_path):
    child = _child(_TAKER, str(tmp_path / "seq"), "10", "0")
    child.stdout.readline()
    child.wait()
    c = SeqCounter(tmp_path / "seq")
    c.open(700)  # the spool holds seq 700 (e.g. written by a WAL replay)
    assert c.gap == (701, c.next - 1)
    c.close()


def test_after_a_reboot_skipped_numbers_are_reported_unsure_not_unused(tmp_path, monkeypatch):
    """A reboot (power loss) may have kept the page of the last-used record from the disk: the skipped range
    may hold used numbers, so it is not declared never used."""
    child = _child(_TAKER, str(tmp_path / "seq"), "300", "0")
    child.stdout.readline()
    child.wait()
    boot = tmp_path / "boot_id"
    boot.write_text(str(uuid.uuid4()))
    monkeypatch.setattr(seq_module, "_BOOT_ID", boot)  # a reboot cannot be produced inside a test
    c = SeqCounter(tmp_path / "seq")
    c.open(0)
    assert c.gap is None and c.unsure == (301, c.next - 1) and c.next > 300
    c.close()
