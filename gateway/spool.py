"""The on-disk spool: a bounded, crash-safe, ordered FIFO of outgoing messages.

Layout of a spool directory
    ``<start>.seg``  append-only segment files; ``<start>`` (20 digits) is the segment's first byte as an
                     offset in the spool's endless byte stream, so a record's *position* is one integer.
    ``head``         the position of the oldest record not yet acknowledged (16 bytes: u64 + CRC32).
    ``lock``         held with ``flock`` while a gateway has the spool open (a second process gets an error).

Record format (little endian)
    ``magic "\\xa5SP1" | u32 body length | u32 CRC32 of (length field + body) | body``, the body being
    ``u64 seq | i64 created (ns since the epoch) | u8 flags (bit 0 QoS 1, bit 1 retain) | u32 samples |
    u16 topic length | topic (UTF-8) | payload``. The CRC covers the length, so a damaged length is caught
    too; after a damaged stretch the reader resynchronises on the next magic whose record checks out.

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
    - Nothing here is thread-safe: one thread (the delivery's I/O thread) calls every method; the counters
      may be read from another thread for display.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gateway.spool")

MAGIC = b"\xa5SP1"
_HDR = struct.Struct("<4sII")
_BODY = struct.Struct("<QqBIH")
_HEAD = struct.Struct("<QI")
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
    """What :func:`decode_records` found in a buffer: ``records`` as ``(offset, next_offset, record)``."""

    records: list[tuple[int, int, SpoolRecord]] = field(default_factory=list)
    damaged_records: int = 0
    damaged_bytes: int = 0
    end: int = 0  # offset just after the last intact record (or where an incomplete one starts)


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
    after that many records.
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
        ok = magic == MAGIC and length <= MAX_BODY
        if ok and end > n:
            if not final and bad_from is None:
                break  # an incomplete record; the caller reads on
            ok = False
        if ok and zlib.crc32(buf[i + _HDR.size : end], zlib.crc32(buf[i + 4 : i + 8])) == crc:
            rec = _parse_body(bytes(buf[i + _HDR.size : end]))
            if rec is not None:
                damaged_until(i)
                out.records.append((i, end, rec))
                i = end
                out.end = i
                continue
        if bad_from is None:
            bad_from = i
        nxt = bytes(buf[i + 1 :]).find(MAGIC)
        i = n if nxt < 0 else i + 1 + nxt
    if bad_from is not None:
        damaged_until(i)
        out.end = i
    elif not out.records and final:
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
    state: int = IN_FLIGHT


class Spool:
    """A directory of segment files used as a FIFO (see the module docstring for the guarantees)."""

    def __init__(self, path: str | Path, *, max_bytes: int, policy: str = "drop_oldest",
                 segment_bytes: int | None = None) -> None:
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
        self.dropped_messages = 0
        self.dropped_samples = 0
        self.damaged_records = 0
        self.damaged_bytes = 0
        self._segments: list[int] = []  # start offsets, ascending
        self._out: deque[_Out] = deque()
        self._requeued: deque[_Out] = deque()
        self._fd = -1  # the newest segment, for appends
        self._head_fd = -1
        self._lock_fd = -1
        self._buf_start = -1  # cached bytes of one segment for reading
        self._buf = b""
        self._head_written = -1

    # ------------------------------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Take the lock, read the head, verify every record from it on, cut a torn tail. Never repairs by
        hand: damage is skipped and counted (``damaged_records``, ``damaged_bytes``)."""
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
        raw = os.pread(self._head_fd, _HEAD.size, 0)
        head = 0
        if len(raw) == _HEAD.size:
            value, crc = _HEAD.unpack(raw)
            if zlib.crc32(raw[:8]) == crc:
                head = value
        starts = sorted(int(p.stem) for p in self.path.glob("*" + _SEG_SUFFIX) if p.stem.isdigit())
        for start in starts:
            size = (self.path / self._name(start)).stat().st_size
            if start + size <= head and start != starts[-1]:
                os.unlink(self.path / self._name(start))  # fully acknowledged before the last stop
            else:
                self._segments.append(start)
        if self._segments:
            head = max(head, self._segments[0])
        self.head = self.cursor = head
        self.end = head
        for k, start in enumerate(self._segments):
            self._scan_segment(start, last=k == len(self._segments) - 1)
        if not self._segments:
            self._segments.append(self.end)
            self._touch(self.end)
        self._fd = os.open(self.path / self._name(self._segments[-1]), os.O_WRONLY | os.O_APPEND)
        self._refresh_oldest()
        if self.damaged_records:
            log.warning("spool %s: skipped %d damaged stretch(es), %d bytes; %d intact message(s) kept",
                        self.path, self.damaged_records, self.damaged_bytes, self.messages)

    def _scan_segment(self, start: int, *, last: bool) -> None:
        file = self.path / self._name(start)
        data = file.read_bytes()
        skip = min(max(0, self.head - start), len(data))
        d = decode_records(memoryview(data)[skip:])
        self.damaged_records += d.damaged_records
        self.damaged_bytes += d.damaged_bytes
        for _, _, rec in d.records:
            self.messages += 1
            self.samples += rec.samples
            self.last_seq = max(self.last_seq, rec.seq)
        self.bytes += sum(nxt - pos for pos, nxt, _ in d.records)
        if last:
            valid_end = skip + (d.records[-1][1] if d.records else 0)
            if valid_end < len(data):  # a torn or damaged tail: cut it so appends continue cleanly
                os.truncate(file, valid_end)
            self.end = start + valid_end
        else:
            self.end = start + len(data)

    def close(self) -> None:
        """Write the head, sync and close (idempotent)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.commit(sync=True)
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        for name in ("_head_fd", "_lock_fd"):
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
                self._count_drop(1, rec.samples)
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
        os.close(self._fd)
        self._touch(start)
        self._segments.append(start)
        self._fd = os.open(self.path / self._name(start), os.O_WRONLY | os.O_APPEND)
        if sync:
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

    def _count_drop(self, messages: int, samples: int) -> None:
        self.dropped_messages += messages
        self.dropped_samples += samples

    def sync(self) -> None:
        """``fsync`` the newest segment and write the head."""
        if self._fd >= 0:
            os.fsync(self._fd)
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
                self._finish(o, dropped=True)
        while len(got) < n and self.cursor < self.end:
            entries = self._read_from_cursor(n - len(got))
            if not entries:
                break
            for o, rec in entries:
                self._out.append(o)
                got.append((o.pos, rec))
        return got

    def _take_entries(self, n: int) -> list[_Out]:
        """Like :meth:`take` but without reading payloads back (for dropping the oldest)."""
        while self._requeued:
            o = self._requeued.popleft()
            if o.state == IN_FLIGHT:
                return [o]
        entries = self._read_from_cursor(n)
        for o, _ in entries:
            self._out.append(o)
        return [o for o, _ in entries]

    def _read_from_cursor(self, n: int) -> list[tuple[_Out, SpoolRecord]]:
        while self.cursor < self.end:
            seg = self._segment_of(self.cursor)
            seg_end = self._segment_end(seg)
            buf = self._load(seg)
            d = decode_records(memoryview(buf)[self.cursor - seg :], final=True, limit=n)
            base = self.cursor
            out = [(_Out(base + p, base + q, q - p, r.samples, r.created_ns), r) for p, q, r in d.records]
            if out:
                self.cursor = out[-1][0].nxt
                return out
            self.cursor = seg_end  # the rest of this segment is damage (counted when opened)
        return []

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
        if self._buf_start != seg or len(self._buf) < size:
            with open(self.path / self._name(seg), "rb") as f:
                self._buf = f.read(size)
            self._buf_start = seg
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

    def _finish(self, o: _Out, *, dropped: bool, advance: bool = True) -> None:
        o.state = DONE
        self.messages -= 1
        self.bytes -= o.size
        self.samples -= o.samples
        if dropped:
            self._count_drop(1, o.samples)
        if advance:
            self._advance()

    def _advance(self) -> None:
        while self._out and self._out[0].state == DONE:
            self.head = self._out.popleft().nxt
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
        """Persist the head and delete segments wholly before it."""
        if self._head_fd < 0:
            return
        if self.head != self._head_written:
            os.pwrite(self._head_fd, _HEAD.pack(self.head, zlib.crc32(struct.pack("<Q", self.head))), 0)
            self._head_written = self.head
            if sync:
                os.fsync(self._head_fd)
        while len(self._segments) > 1 and self._segments[1] <= self.head:
            start = self._segments.pop(0)
            if self._buf_start == start:
                self._buf_start, self._buf = -1, b""
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / self._name(start))

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
