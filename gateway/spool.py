"""The on-disk spool: a bounded, crash-safe, ordered FIFO of outgoing messages.

Layout of a spool directory
    ``<start>.seg``  append-only segment files; ``<start>`` (20 digits) is the segment's first byte as an
                     offset in the spool's endless byte stream, so a record's *position* is one integer.
    ``head``         the position of the oldest record not yet done, how many records of its segment are done,
                     and the drop counters per reason: one record written at once, in two CRC'd slots used in
                     turn (a torn write leaves the previous one). The 16-byte form of older versions is read.
    ``index``        per sealed segment: its size, how many messages and samples it held, its seq range.
    ``lock``         held with ``flock`` while a gateway has the spool open (a second process gets an error).

Record format (little endian)
    ``magic "\\xa5SP1" | u32 body length | u32 CRC32 of (length field + body) | body``, the body being
    ``u64 seq | i64 created (ns since the epoch) | u8 flags (bit 0 QoS 1, bit 1 retain) | u32 samples |
    u16 topic length | topic (UTF-8) | payload``. The CRC covers the length, so a damaged length is caught
    too; after a damaged stretch the reader resynchronises on the next magic whose record checks out,
    searching forward only (linear in the damaged length). A record dropped while one before it is still in
    flight gets the magic :data:`DROPPED_MAGIC` in place (its CRC still checks out): it is skipped, not held.

Guarantees (what :class:`Spool` promises its caller)
    - :meth:`Spool.open` never needs a manual repair: damaged stretches are skipped and counted
      (``damaged_records``: one per damaged stretch, since the records inside it cannot be told apart;
      ``damaged_bytes``), a torn tail of the newest segment is cut off, every intact record is kept.
    - Records are handed out (:meth:`take`) in the order they were appended, each exactly once until it is
      acknowledged (:meth:`ack`), or until the link is lost (:meth:`requeue`: handed out again, first).
    - The quota ``max_bytes`` bounds the bytes of the records held (acknowledged ones are not held);
      the files may exceed it by less than one segment until the head leaves that segment.
      When an append does not fit, ``drop_oldest`` drops the oldest records not in flight and
      ``drop_newest`` refuses the new record; either way exactly those records are counted.
    - The drop counters (``dropped_messages``, ``dropped_samples``, :meth:`dropped_by_reason`) are totals
      since the directory was created. They are written with the head in one write at :meth:`commit`, so
      after a crash the records a restart holds again and the counters agree: a SIGKILL at any point loses
      at most the counts of the drops made since the last :meth:`commit` (and, for ``drop_oldest`` with
      nothing in flight, not even those: the dropped records come back as held).
    - A sealed segment found missing, emptied, cut short or damaged at :meth:`open`: its records that were not
      done before are counted once as dropped for reason ``lost`` and logged once (``lost_segments``,
      ``lost_ranges``); exact as long as its ``index`` entry exists.
    - Nothing here is thread-safe: one thread (the delivery's I/O thread) calls every method; the counters
      may be read from another thread for display.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gateway.spool")

MAGIC = b"\xa5SP1"
DROPPED_MAGIC = bytes(b ^ 0xFF for b in MAGIC)  # a record dropped in place: intact, no longer held
# (every byte differs from MAGIC, so no single damaged byte turns a held record into a dropped one)
_ANY_MAGIC = re.compile(re.escape(MAGIC) + b"|" + re.escape(DROPPED_MAGIC))
_HDR = struct.Struct("<4sII")
_BODY = struct.Struct("<QqBIH")
_HEAD = struct.Struct("<QI")  # the head file before drop counters were kept in it (still read)
REASONS = ("full", "oversize", "unreadable", "lost")
"""Why messages were dropped: ``full`` (the quota policy), ``oversize`` (one message larger than
``max_bytes``), ``unreadable`` (a held record that could not be read back), ``lost`` (a sealed segment
missing, emptied, cut short or damaged: messages the spool had written and cannot give back)."""
_STATE_MAGIC = b"SPH2"
_STATE = struct.Struct("<4sQQQQQ" + "QQ" * len(REASONS) + "Q")
_STATE_SLOT = 128  # two slots, written alternately: a torn write leaves the previous state readable
_INDEX_MAGIC = b"SPI1"
_INDEX = struct.Struct("<4sQQQQQQB")
_HOLE_SEEN = 1  # index flag: this segment's missing bytes were already reported
MAX_BODY = 300 * 1024 * 1024
_SEG_SUFFIX = ".seg"

IN_FLIGHT, DONE = 0, 1


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, or another process holds it)."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One outgoing message as kept on disk."""

    seq: int
    topic: str
    payload: bytes
    samples: int = 0
    created_ns: int = 0
    qos: int = 1
    retain: bool = False


def encode_record(rec: SpoolRecord) -> bytes:
    """The bytes of one record (header and body)."""
    topic = rec.topic.encode()
    flags = (1 if rec.qos else 0) | (2 if rec.retain else 0)
    body = _BODY.pack(rec.seq, rec.created_ns, flags, rec.samples, len(topic)) + topic + rec.payload
    length = struct.pack("<I", len(body))
    return MAGIC + length + struct.pack("<I", zlib.crc32(body, zlib.crc32(length))) + body


@dataclass(slots=True)
class Decoded:
    """What :func:`decode_records` found in a buffer: ``records`` as ``(offset, next_offset, record)``.

    ``dropped``: records marked dropped in place (:data:`DROPPED_MAGIC`), same shape; they are intact but no
    longer held. ``searched_bytes``, ``crc_checks`` and ``crc_bytes`` count the work done: every byte of a
    damaged stretch is searched once for the magic; a CRC is computed only where a magic and a plausible
    length are found, over that length.
    """

    records: list[tuple[int, int, SpoolRecord]] = field(default_factory=list)
    dropped: list[tuple[int, int, SpoolRecord]] = field(default_factory=list)
    damaged_records: int = 0
    damaged_bytes: int = 0
    end: int = 0  # offset just after the last intact record (or where an incomplete one starts)
    searched_bytes: int = 0
    crc_checks: int = 0
    crc_bytes: int = 0


def _parse_body(body: bytes) -> SpoolRecord | None:
    if len(body) < _BODY.size:
        return None
    seq, created, flags, samples, tlen = _BODY.unpack_from(body)
    if flags > 3 or _BODY.size + tlen > len(body):
        return None
    try:
        topic = body[_BODY.size : _BODY.size + tlen].decode()
    except UnicodeDecodeError:
        return None
    return SpoolRecord(seq, topic, body[_BODY.size + tlen :], samples, created, flags & 1, bool(flags & 2))


def decode_records(buf: bytes | memoryview, *, final: bool = True, limit: int | None = None) -> Decoded:
    """Every intact record in ``buf``, skipping damaged stretches (never raises on any input).

    ``final``: ``buf`` is the whole rest of the file, so an incomplete record at its end is damage (a torn
    tail); otherwise reading stops before it (``end``) so that the caller can read further. ``limit``: stop
    after that many (held) records. The work is linear in the length of a damaged stretch: the search for
    the next magic never goes back, and a CRC is only computed over a candidate's own claimed length.
    """
    buf = memoryview(buf)
    out = Decoded()
    n, i = len(buf), 0
    bad_from: int | None = None

    def damaged_until(j: int) -> None:
        nonlocal bad_from
        if bad_from is not None:
            out.damaged_records += 1
            out.damaged_bytes += j - bad_from
            bad_from = None

    while i < n and (limit is None or len(out.records) < limit):
        if n - i < _HDR.size:
            if not final and bad_from is None:
                break
            bad_from = i if bad_from is None else bad_from
            i = n
            break
        magic, length, crc = _HDR.unpack_from(buf, i)
        end = i + _HDR.size + length
        ok = (magic == MAGIC or magic == DROPPED_MAGIC) and _BODY.size <= length <= MAX_BODY
        if ok and end > n:
            if not final and bad_from is None:
                break  # an incomplete record; the caller reads on
            ok = False
        if ok:
            out.crc_checks += 1
            out.crc_bytes += length
        if ok and zlib.crc32(buf[i + _HDR.size : end], zlib.crc32(buf[i + 4 : i + 8])) == crc:
            rec = _parse_body(bytes(buf[i + _HDR.size : end]))
            if rec is not None:
                damaged_until(i)
                (out.records if magic == MAGIC else out.dropped).append((i, end, rec))
                i = end
                out.end = i
                continue
        if bad_from is None:
            bad_from = i
        found = _ANY_MAGIC.search(buf, i + 1)
        nxt = n if found is None else found.start()
        out.searched_bytes += nxt - i
        i = nxt
    if bad_from is not None:
        damaged_until(i)
        out.end = i
    elif not out.records and not out.dropped and final:
        out.end = i
    return out


@dataclass(slots=True)
class _Out:
    """A record handed out and not yet acknowledged or dropped."""

    pos: int
    nxt: int
    size: int
    samples: int
    created_ns: int
    seg: int
    state: int = IN_FLIGHT


@dataclass(slots=True)
class SegmentInfo:
    """What a sealed segment held when it was sealed (one entry of the ``index`` file)."""

    start: int
    size: int
    messages: int = 0
    samples: int = 0
    min_seq: int = 0
    max_seq: int = 0
    flags: int = 0

    def add(self, seq: int, samples: int) -> None:
        self.messages += 1
        self.samples += samples
        self.min_seq = seq if self.messages == 1 else min(self.min_seq, seq)
        self.max_seq = max(self.max_seq, seq)

    def encode(self) -> bytes:
        raw = _INDEX.pack(
            _INDEX_MAGIC, self.start, self.size, self.messages, self.samples, self.min_seq, self.max_seq, self.flags
        )
        return raw + struct.pack("<I", zlib.crc32(raw))


@dataclass(slots=True)
class _Found:
    """One segment file as read at open."""

    size: int = 0
    present: int = 0  # intact records after the head (held, or dropped in place)
    present_samples: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    min_seq: int | None = None
    max_seq: int | None = None


class Spool:
    """A directory of segment files used as a FIFO (see the module docstring for the guarantees)."""

    def __init__(
        self, path: str | Path, *, max_bytes: int, policy: str = "drop_oldest", segment_bytes: int | None = None
    ) -> None:
        if policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown spool policy {policy!r}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.policy = policy
        self.segment_bytes = segment_bytes or min(max(self.max_bytes // 16, 64 * 1024), 4 * 1024 * 1024)
        self.head = 0  # oldest position not yet done
        self.cursor = 0  # next position to hand out
        self.end = 0  # where the next record is appended
        self.messages = 0  # records held (not acknowledged, not dropped)
        self.bytes = 0  # their bytes
        self.samples = 0  # their samples
        self.oldest_created_ns: int | None = None
        self.last_seq = 0
        self.dropped_messages = 0  # every reason, kept across restarts (the ``head`` file)
        self.dropped_samples = 0
        self.dropped: dict[str, list[int]] = {r: [0, 0] for r in REASONS}  # reason -> [messages, samples]
        self.lost_segments = 0  # segment files found missing, emptied or cut short (kept across restarts)
        self.lost_ranges: list[tuple[int, int]] = []  # seq ranges of the losses found by this open()
        self.damaged_records = 0
        self.damaged_bytes = 0
        self._segments: list[int] = []  # start offsets, ascending
        self._index: dict[int, SegmentInfo] = {}  # sealed segments still on disk
        self._index_stale = 0
        self._index_dirty = False
        self._active = SegmentInfo(0, 0)  # what the newest segment holds, for its index entry
        self._out: deque[_Out] = deque()
        self._requeued: deque[_Out] = deque()
        self._fd = -1  # the newest segment, for appends
        self._head_fd = -1
        self._index_fd = -1
        self._lock_fd = -1
        self._buf_start = -1  # cached bytes of one segment for reading
        self._buf_size = -1
        self._buf = b""
        self._head_seg = 0  # the segment of the last record done, and how many of its records are done
        self._head_done = 0
        self._head_done_samples = 0
        self._gen = 0
        self._state_written: tuple[int, ...] | None = None
        self._head_synced = 0
        self._mark_failed = False

    # ------------------------------------------------------------------------------------------ counters

    @property
    def lost_messages(self) -> int:
        """Messages written to a segment that was later found missing, emptied, cut short or damaged."""
        return self.dropped["lost"][0]

    @property
    def lost_samples(self) -> int:
        return self.dropped["lost"][1]

    def dropped_by_reason(self) -> dict[str, dict[str, int]]:
        """``{reason: {"messages": m, "samples": s}}`` for every reason in :data:`REASONS`."""
        return {r: {"messages": m, "samples": n} for r, (m, n) in self.dropped.items()}

    def _count_drop(self, messages: int, samples: int, reason: str = "full") -> None:
        self.dropped_messages += messages
        self.dropped_samples += samples
        self.dropped[reason][0] += messages
        self.dropped[reason][1] += samples

    # ------------------------------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Take the lock, read the head and the counters, verify every record from the head on, cut a torn
        tail, count what is missing. Never repairs by hand: damage is skipped and counted
        (``damaged_records``, ``damaged_bytes``); messages of a sealed segment that is missing, emptied, cut
        short or damaged are counted once as dropped for reason ``lost`` (``lost_messages``,
        ``lost_segments``, ``lost_ranges``) and logged once."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"spool directory {self.path} is in use by another gateway process") from None
        self._head_fd = os.open(self.path / "head", os.O_RDWR | os.O_CREAT, 0o644)
        head, known = self._read_state()
        index = self._read_index()
        files = {int(p.stem): p.stat().st_size for p in self.path.glob("*" + _SEG_SUFFIX) if p.stem.isdigit()}
        starts = sorted(files)
        for k, start in enumerate(starts):
            if k + 1 < len(starts) and starts[k + 1] <= head:
                os.unlink(self.path / self._name(start))  # fully acknowledged before the last stop
                del files[start]
            else:
                self._segments.append(start)
        index = {s: e for s, e in index.items() if s + e.size > head or s in files}
        first = min([*self._segments, *index], default=head)
        if known and head < first and not any(s <= head < s + e.size for s, e in index.items()):
            self._lose("the oldest segment", (0, self._first_seq_of(first)), first - head, None)
        if self._segments:
            head = max(head, self._segments[0])
        self.head = self.cursor = self.end = head
        found = {
            start: self._scan_segment(start, last=k == len(self._segments) - 1)
            for k, start in enumerate(self._segments)
        }
        self._account(index, found)
        if not self._segments or self._segments[-1] in self._index:  # no unsealed segment: start one
            start = max([self.end, *(e.start + e.size for e in self._index.values())])
            if self._segments:  # a sealed segment had a newer one after it, now gone
                self._lose("the newest segment", (self._index[self._segments[-1]].max_seq + 1, 0), 0, None)
            self.end = start
            self._segments.append(start)
            self._touch(start)
            self._active = SegmentInfo(start, 0)
        self._fd = os.open(self.path / self._name(self._segments[-1]), os.O_WRONLY | os.O_APPEND)
        self._rewrite_index()
        self._refresh_oldest()
        self.commit(sync=True)
        if self.damaged_records:
            log.warning(
                "spool %s: skipped %d damaged stretch(es), %d bytes; %d intact message(s) kept",
                self.path,
                self.damaged_records,
                self.damaged_bytes,
                self.messages,
            )

    def _read_state(self) -> tuple[int, bool]:
        """The head and the persisted counters; ``(head, valid)``."""
        raw = os.pread(self._head_fd, 2 * _STATE_SLOT, 0)
        best: tuple[int, ...] | None = None
        for off in (0, _STATE_SLOT):
            chunk = raw[off : off + _STATE.size + 4]
            if len(chunk) < _STATE.size + 4 or chunk[:4] != _STATE_MAGIC:
                continue
            if zlib.crc32(chunk[: _STATE.size]) != struct.unpack_from("<I", chunk, _STATE.size)[0]:
                continue
            values = _STATE.unpack_from(chunk)
            if best is None or values[1] > best[1]:
                best = values
        if best is None:
            if len(raw) >= _HEAD.size:  # the format before counters were kept
                value, crc = _HEAD.unpack_from(raw)
                if zlib.crc32(raw[:8]) == crc:
                    return value, True
            return 0, False
        _, self._gen, head, self._head_seg, self._head_done, self._head_done_samples = best[:6]
        for k, reason in enumerate(REASONS):
            self.dropped[reason] = [best[6 + 2 * k], best[7 + 2 * k]]
        self.lost_segments = best[-1]
        self.dropped_messages = sum(m for m, _ in self.dropped.values())
        self.dropped_samples = sum(n for _, n in self.dropped.values())
        self._state_written = self._state()
        self._head_synced = head
        return head, True

    def _state(self) -> tuple[int, ...]:
        return (
            self.head,
            self._head_seg,
            self._head_done,
            self._head_done_samples,
            *(x for r in REASONS for x in self.dropped[r]),
            self.lost_segments,
        )

    def _read_index(self) -> dict[int, SegmentInfo]:
        try:
            raw = (self.path / "index").read_bytes()
        except FileNotFoundError:
            return {}
        out: dict[int, SegmentInfo] = {}
        step = _INDEX.size + 4
        for off in range(0, len(raw) - step + 1, step):
            chunk = raw[off : off + step]
            if (
                chunk[:4] == _INDEX_MAGIC
                and zlib.crc32(chunk[: _INDEX.size]) == struct.unpack_from("<I", chunk, _INDEX.size)[0]
            ):
                e = SegmentInfo(*_INDEX.unpack_from(chunk)[1:])
                out[e.start] = e
        return out

    def _rewrite_index(self) -> None:
        tmp = self.path / "index.tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(self._index[s].encode() for s in sorted(self._index)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "index")
        if self._index_fd >= 0:
            os.close(self._index_fd)
        self._index_fd = os.open(self.path / "index", os.O_WRONLY | os.O_APPEND)
        self._index_stale = 0

    def _scan_segment(self, start: int, *, last: bool) -> _Found:
        file = self.path / self._name(start)
        data = file.read_bytes()
        skip = min(max(0, self.head - start), len(data))
        d = decode_records(memoryview(data)[skip:])
        self.damaged_records += d.damaged_records
        self.damaged_bytes += d.damaged_bytes
        f = _Found(size=len(data))
        for _, _, rec in sorted(d.records + d.dropped, key=lambda x: x[0]):
            f.present += 1
            f.present_samples += rec.samples
            f.first_seq = rec.seq if f.first_seq is None else f.first_seq
            f.last_seq = rec.seq
            f.min_seq = rec.seq if f.min_seq is None else min(f.min_seq, rec.seq)
            f.max_seq = rec.seq if f.max_seq is None else max(f.max_seq, rec.seq)
        for _, _, rec in d.records:
            self.messages += 1
            self.samples += rec.samples
            self.last_seq = max(self.last_seq, rec.seq)
        for _, _, rec in d.dropped:
            self.last_seq = max(self.last_seq, rec.seq)
        self.bytes += sum(nxt - pos for pos, nxt, _ in d.records)
        if last:
            ends = [q for _, q, _ in d.records + d.dropped]
            valid_end = skip + max(ends, default=0)
            if valid_end < len(data):  # a torn or damaged tail: cut it so appends continue cleanly
                os.truncate(file, valid_end)
            self.end = start + valid_end
        else:
            self.end = start + len(data)
        return f

    def _done_in(self, start: int) -> tuple[int, int]:
        return (self._head_done, self._head_done_samples) if start == self._head_seg else (0, 0)

    def _first_seq_of(self, start: int) -> int:
        """The seq just before the first record of a segment file (0 when unknown)."""
        try:
            d = decode_records((self.path / self._name(start)).read_bytes(), limit=1)
        except FileNotFoundError:
            return 0
        return d.records[0][2].seq - 1 if d.records else 0

    def _account(self, index: dict[int, SegmentInfo], found: dict[int, _Found]) -> None:
        """Compare every sealed segment with its index entry (what it held when sealed, less what was done
        before the head): count what is missing, once, and rebuild the index from what is there now."""
        newest = self._segments[-1] if self._segments else None
        sealed = sorted({*(s for s in self._segments if s != newest or s in index), *index})
        bounds = sorted({*self._segments, *index})
        for start in sealed:
            e, f = index.get(start), found.get(start, _Found())
            later = [b for b in bounds if b > start]
            size = e.size if e else (later[0] - start if later else f.size)
            done, done_samples = self._done_in(start)
            hole = f.size < size and not (e is not None and e.flags & _HOLE_SEEN)
            what = f"segment {self._name(start)}" + (" (missing)" if start not in found else "")
            if e is not None and e.messages > done + f.present:
                rng = (e.min_seq, e.max_seq)
                lost = (e.messages - done - f.present, max(0, e.samples - done_samples - f.present_samples))
                self._lose(what, rng, size - f.size, lost, hole=hole)
            elif hole and e is None:
                self._lose(what, self._neighbours(start, found), size - f.size, None)
            if start in found or start + size > self.head:
                self._index[start] = SegmentInfo(
                    start,
                    size,
                    done + f.present,
                    done_samples + f.present_samples,
                    f.min_seq if f.min_seq is not None else (e.min_seq if e else 0),
                    f.max_seq if f.max_seq is not None else (e.max_seq if e else 0),
                    (e.flags if e else 0) | (_HOLE_SEEN if f.size < size else 0),
                )
        if newest is not None and newest not in self._index:
            f = found[newest]
            done, done_samples = self._done_in(newest)
            self._active = SegmentInfo(
                newest, 0, done + f.present, done_samples + f.present_samples, f.min_seq or 0, f.max_seq or 0
            )

    def _neighbours(self, start: int, found: dict[int, _Found]) -> tuple[int, int]:
        before = [f.last_seq for s, f in sorted(found.items()) if s <= start and f.last_seq is not None]
        after = [f.first_seq for s, f in sorted(found.items()) if s > start and f.first_seq is not None]
        return (before[-1] + 1 if before else 0, after[0] - 1 if after else 0)

    def _lose(
        self, what: str, rng: tuple[int, int], missing_bytes: int, lost: tuple[int, int] | None, *, hole: bool = True
    ) -> None:
        """Count and log (once: the index remembers it) messages the spool wrote and cannot give back."""
        if hole:
            self.lost_segments += 1
        self.lost_ranges.append(rng)
        seqs = f"{rng[0]}..{rng[1]}" if rng[1] else f"from {rng[0]}"
        gone = f", {missing_bytes} bytes missing" if missing_bytes > 0 else ""
        if lost is not None:
            self._count_drop(*lost, reason="lost")
            log.warning(
                "spool %s: %s: %d message(s) (%d samples) lost, seq within %s%s; counted as dropped (reason lost)",
                self.path,
                what,
                lost[0],
                lost[1],
                seqs,
                gone,
            )
        else:
            log.warning(
                "spool %s: %s is gone or cut short%s; an unknown number of messages with seq within %s was lost",
                self.path,
                what,
                gone,
                seqs,
            )

    def close(self) -> None:
        """Write the head and the counters, sync and close (idempotent)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.commit(sync=True)
                os.fsync(self._fd)
                if self._index_fd >= 0:
                    os.fsync(self._index_fd)
            os.close(self._fd)
            self._fd = -1
        for name in ("_head_fd", "_index_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    # ------------------------------------------------------------------------------------------- writing

    def append(self, records: list[SpoolRecord], *, sync: bool = False) -> list[tuple[SpoolRecord, int, int] | None]:
        """Append ``records`` in order, applying the policy when full; one write, one optional ``fsync``.

        Returns, per record, ``(record, position, next_position)`` or ``None`` when it was dropped.
        """
        out: list[tuple[SpoolRecord, int, int] | None] = []
        chunk: list[bytes] = []
        pos = self.end
        for rec in records:
            data = encode_record(rec)
            size = len(data)
            if chunk and self.bytes + size > self.max_bytes:  # the oldest may be in this very batch
                self._write(chunk, False)
                chunk = []
                self.end = pos
            if not self._make_room(size):
                self._count_drop(1, rec.samples, "oversize" if size > self.max_bytes else "full")
                out.append(None)
                continue
            if pos - self._segments[-1] + size > self.segment_bytes and pos > self._segments[-1]:
                self._write(chunk, sync)
                chunk = []
                self._rotate(pos, sync)
            chunk.append(data)
            out.append((rec, pos, pos + size))
            pos += size
            self.messages += 1
            self.bytes += size
            self.samples += rec.samples
            self.last_seq = max(self.last_seq, rec.seq)
            self._active.add(rec.seq, rec.samples)
            if self.oldest_created_ns is None:
                self.oldest_created_ns = rec.created_ns
        self._write(chunk, sync)
        self.end = pos
        return out

    def _write(self, chunk: list[bytes], sync: bool) -> None:
        if chunk:
            os.write(self._fd, b"".join(chunk))
        if sync:
            os.fsync(self._fd)

    def _rotate(self, start: int, sync: bool) -> None:
        """Seal the newest segment (its index entry says what it holds) and start one at ``start``."""
        os.close(self._fd)
        self._touch(start)  # first the new file, then the entry: an entry always has a newer file after it
        sealed = self._active
        sealed.size = start - sealed.start
        self._index[sealed.start] = sealed
        os.write(self._index_fd, sealed.encode())
        self._index_dirty = True
        self._active = SegmentInfo(start, 0)
        self._segments.append(start)
        self._fd = os.open(self.path / self._name(start), os.O_WRONLY | os.O_APPEND)
        if sync:
            os.fsync(self._index_fd)
            self._index_dirty = False
            dfd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _make_room(self, size: int) -> bool:
        if size > self.max_bytes:
            return False
        if self.bytes + size <= self.max_bytes:
            return True
        if self.policy == "drop_newest":
            return False
        while self.bytes + size > self.max_bytes:
            victims = self._take_entries(1)
            if not victims:
                return False  # everything held is in flight; the new record cannot fit
            self._finish(victims[0], dropped=True)
        return True

    def sync(self) -> None:
        """``fsync`` the newest segment and the index, write the head and the counters."""
        if self._fd >= 0:
            os.fsync(self._fd)
        if self._index_fd >= 0 and self._index_dirty:
            os.fsync(self._index_fd)
            self._index_dirty = False
        self.commit(sync=True)

    # ------------------------------------------------------------------------------------------- reading

    def take(self, n: int) -> list[tuple[int, SpoolRecord]]:
        """Hand out up to ``n`` records, oldest first: ``(position, record)``; each stays held until acked."""
        got: list[tuple[int, SpoolRecord]] = []
        while self._requeued and len(got) < n:
            o = self._requeued.popleft()
            if o.state != IN_FLIGHT:
                continue
            rec = self._read_at(o.pos)
            if rec is not None:
                got.append((o.pos, rec))
            else:
                self._finish(o, dropped=True, reason="unreadable")
        while len(got) < n and self.cursor < self.end:
            entries = self._read_from_cursor(n - len(got))
            if not entries:
                break
            got.extend((o.pos, rec) for o, rec in entries)
        return got

    def _take_entries(self, n: int) -> list[_Out]:
        """Like :meth:`take` but without reading payloads back (for dropping the oldest)."""
        while self._requeued:
            o = self._requeued.popleft()
            if o.state == IN_FLIGHT:
                return [o]
        return [o for o, _ in self._read_from_cursor(n)]

    def _read_from_cursor(self, n: int) -> list[tuple[_Out, SpoolRecord]]:
        """Up to ``n`` held records from the cursor on, now handed out; records dropped in place on the way
        are passed as done (so the head moves over them)."""
        got: list[tuple[_Out, SpoolRecord]] = []
        while self.cursor < self.end and not got:
            seg = self._segment_of(self.cursor)
            seg_end = self._segment_end(seg)
            buf = self._load(seg)
            base = self.cursor
            d = decode_records(memoryview(buf)[base - seg :], final=True, limit=n)
            items = sorted(
                [(p, q, r, IN_FLIGHT) for p, q, r in d.records] + [(p, q, r, DONE) for p, q, r in d.dropped],
                key=lambda x: x[0],
            )
            for p, q, r, state in items:
                o = _Out(base + p, base + q, q - p, r.samples, r.created_ns, seg, state)
                self._out.append(o)
                if state == IN_FLIGHT:
                    got.append((o, r))
            # the rest of this segment is damage or missing (counted when opened)
            self.cursor = base + items[-1][1] if items else seg_end
        return got

    def _read_at(self, pos: int) -> SpoolRecord | None:
        seg = self._segment_of(pos)
        d = decode_records(memoryview(self._load(seg))[pos - seg :], limit=1)
        return d.records[0][2] if d.records and d.records[0][0] == 0 else None

    def _segment_of(self, pos: int) -> int:
        seg = self._segments[0]
        for s in self._segments:
            if s > pos:
                break
            seg = s
        return seg

    def _segment_end(self, seg: int) -> int:
        k = self._segments.index(seg)
        return self._segments[k + 1] if k + 1 < len(self._segments) else self.end

    def _load(self, seg: int) -> bytes:
        size = self._segment_end(seg) - seg
        if self._buf_start != seg or self._buf_size < size:
            try:
                with open(self.path / self._name(seg), "rb") as f:
                    self._buf = f.read(size)
            except FileNotFoundError:
                self._buf = b""
            self._buf_start, self._buf_size = seg, size  # a file cut short is not re-read for every take
        return self._buf

    # ------------------------------------------------------------------------------------ acknowledging

    def ack(self, positions: list[int]) -> None:
        """The records at ``positions`` (handed out by :meth:`take`) were acknowledged by the broker."""
        wanted = set(positions)
        for o in [o for o in self._out if o.pos in wanted and o.state == IN_FLIGHT]:
            self._finish(o, dropped=False, advance=False)
        self._advance()

    def requeue(self, positions: list[int] | None = None) -> None:
        """The link was lost: records handed out (all, or those at ``positions``) and not acknowledged will be
        handed out again, before any other, in their order."""
        again = [o for o in self._out if o.state == IN_FLIGHT and (positions is None or o.pos in positions)]
        known = {o.pos for o in self._requeued}
        merged = sorted([*self._requeued, *(o for o in again if o.pos not in known)], key=lambda o: o.pos)
        self._requeued = deque(merged)

    def _finish(self, o: _Out, *, dropped: bool, advance: bool = True, reason: str = "full") -> None:
        o.state = DONE
        self.messages -= 1
        self.bytes -= o.size
        self.samples -= o.samples
        if dropped:
            self._count_drop(1, o.samples, reason)
        if advance:
            self._advance()
        if dropped and o.pos >= self.head:
            self._mark_dropped(o)

    def _mark_dropped(self, o: _Out) -> None:
        """A record dropped behind one still in flight: the head cannot pass it yet, so mark it in place
        (its magic becomes :data:`DROPPED_MAGIC`), or a crash would bring it back although it was counted."""
        try:
            fd = os.open(self.path / self._name(o.seg), os.O_WRONLY)
            try:
                os.pwrite(fd, DROPPED_MAGIC, o.pos - o.seg)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._mark_failed:
                self._mark_failed = True
                log.warning(
                    "spool %s: cannot mark a dropped record (%s); after a crash it may be sent although "
                    "it was counted as dropped",
                    self.path,
                    exc.strerror,
                )

    def _advance(self) -> None:
        while self._out and self._out[0].state == DONE:
            o = self._out.popleft()
            self.head = o.nxt
            if o.seg != self._head_seg:
                self._head_seg, self._head_done, self._head_done_samples = o.seg, 0, 0
            self._head_done += 1
            self._head_done_samples += o.samples
        if not self._out:
            self.head = self.cursor
        self._refresh_oldest()

    def _refresh_oldest(self) -> None:
        if self.messages == 0:
            self.oldest_created_ns = None
            return
        for o in self._out:
            if o.state == IN_FLIGHT:
                self.oldest_created_ns = o.created_ns
                return
        if self.cursor < self.end:
            seg = self._segment_of(self.cursor)
            d = decode_records(memoryview(self._load(seg))[self.cursor - seg :], limit=1)
            self.oldest_created_ns = d.records[0][2].created_ns if d.records else None

    def commit(self, *, sync: bool = False) -> None:
        """Persist the head and the drop counters (one write) and delete segments wholly before the head.

        The write goes to the page cache (it survives a crash of the process at once) and reaches the disk
        with ``sync`` or before a segment is deleted, so a power loss never leaves a head behind a deleted
        segment."""
        if self._head_fd < 0:
            return
        state = self._state()
        if state != self._state_written:
            self._gen += 1
            raw = _STATE.pack(_STATE_MAGIC, self._gen, *state)
            os.pwrite(self._head_fd, raw + struct.pack("<I", zlib.crc32(raw)), (self._gen % 2) * _STATE_SLOT)
            self._state_written = state
            if sync:
                os.fsync(self._head_fd)
                self._head_synced = self.head
        while len(self._segments) > 1 and self._segments[1] <= self.head:
            if self._head_synced < self._segments[1]:
                os.fsync(self._head_fd)
                self._head_synced = self.head
            start = self._segments.pop(0)
            if self._buf_start == start:
                self._buf_start, self._buf = -1, b""
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / self._name(start))
            if self._index.pop(start, None) is not None:
                self._index_stale += 1
        if self._index_stale > 64:
            self._rewrite_index()

    # ---------------------------------------------------------------------------------------------- misc

    def oldest_age(self, now_ns: int | None = None) -> float | None:
        """Seconds since the oldest held record was created, or None when empty."""
        created = self.oldest_created_ns
        if created is None or self.messages == 0:
            return None
        return max(0.0, ((now_ns or time.time_ns()) - created) / 1e9)

    @staticmethod
    def _name(start: int) -> str:
        return f"{start:020d}{_SEG_SUFFIX}"

    def _touch(self, start: int) -> None:
        fd = os.open(self.path / self._name(start), os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
