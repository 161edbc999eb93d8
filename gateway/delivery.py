"""At-least-once delivery of data messages: a RAM front, the on-disk spool behind it, replay in order.

Who calls what
    One delivery per uplink. The publisher of that uplink numbers a message before anything can lose it,
    encodes it, and hands it over as an opaque ``(seq, topic, payload, samples)`` record
    (:meth:`Delivery.submit`); the engine runs :meth:`Delivery.run` as a task and awaits
    :meth:`Delivery.close` on stop, before the uplink stops. At send time the payload goes through ``wire``
    (the encoder's: replay marking and the active link's compression). The uplink reports PUBACKs, link
    losses and its data gate (byte budget) through the callbacks registered with ``uplink.set_delivery``.
    Everything runs on the event loop thread except file I/O, which runs in one dedicated thread (appends,
    fsync, reads, head updates; in submission order).

Paths of a message
    - Before the first connect attempt has had an outcome, messages wait in RAM (not on disk, not marked
      as replayed); if that attempt fails they go to the backlog like any outage's.
    - Link up and keeping up: sent at once from RAM (the *live* path) and forgotten when the PUBACK comes.
    - Link down, or a PUBACK late by more than ``spool.ack_timeout`` (the link is then closed and reopened:
      a half-open link is caught this way), or more than ``mqtt.max_queued`` messages waiting in RAM: the
      message, and everything unacknowledged in RAM, goes to the on-disk *backlog* spool in ``seq`` order, so
      the backlog never holds a message before an older one. A message already in flight stays in flight
      too; when its PUBACK comes, its copy on disk is forgotten without being sent (after a restart before
      the replay reached that copy, it is sent twice).
    - Backlog: replayed oldest first when the link is up, at most ``spool.replay_rate`` messages per second
      and half the in-flight window, so live data keeps flowing; replayed payloads carry ``"replay": true``.
      The start and the end of a replay are logged with counts.
    - The active link's byte budget spent (``max_bytes_per_day``): like an outage for data, until it resets.
    - ``durability: always``: every message is first appended and fsync'ed to a write-ahead spool (``wal/``)
      and sent only then; a crash or power loss while the link is up loses nothing that was submitted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.seq import SeqCounter
from gateway.spool import Spool, SpoolError, SpoolRecord

if TYPE_CHECKING:
    from gateway.config.models import SpoolSection

log = logging.getLogger("gateway.delivery")

Wire = Callable[[str, bytes, bool], tuple[str, bytes]]
"""``wire(topic, body, replay) -> (topic, payload)``: the bytes put on the wire for a stored body."""


def plain_wire(topic: str, body: bytes, replay: bool) -> tuple[str, bytes]:
    """A ``wire`` that sends the body as it is (tests)."""
    return topic, body


_WATCH_INTERVAL = 0.25
_SYNC_INTERVAL = 1.0  # outage mode: spooled data reaches the disk within this (plus the fsync itself)


class Uplink(Protocol):
    @property
    def connected(self) -> bool: ...
    @property
    def accepts_data(self) -> bool: ...
    @property
    def settled(self) -> bool: ...

    def try_send(self, topic: str, payload: bytes, *, qos: int) -> int | None: ...
    def set_delivery(
        self,
        on_ack: Callable[[int], None],
        on_lost: Callable[[], None],
        on_data_gate: Callable[[bool], None] | None = None,
    ) -> None: ...
    def drop_connection(self, reason: str) -> None: ...


# ---------------------------------------------------------------------------------------------- delivery


@dataclass(slots=True)
class _Sent:
    rec: SpoolRecord
    backlog_pos: int | None  # set for a replayed message
    wal_pos: int | None  # set for a live message in durability "always"
    at: float


@dataclass(slots=True)
class _Job:
    """One batch of file work, done in the I/O thread in this order."""

    requeue: list[int] = field(default_factory=list)
    backlog_acks: list[int] = field(default_factory=list)
    wal_records: list[SpoolRecord] = field(default_factory=list)
    backlog_records: list[SpoolRecord] = field(default_factory=list)
    wal_acks: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeue or self.backlog_acks or self.wal_records or self.backlog_records or self.wal_acks)


class Delivery:
    """The data path between the engine and the MQTT uplink (see the module docstring)."""

    def __init__(
        self,
        uplink: Uplink,
        cfg: SpoolSection,
        *,
        path: Path,
        ack_timeout: float,
        max_queued: int,
        wire: Wire = plain_wire,
        max_inflight: int = 64,
        flush_timeout: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self.path = path
        self.always = cfg.durability == "always"
        self.ack_timeout = ack_timeout
        self.max_queued = max_queued
        self.max_inflight = max(2, max_inflight)
        self.flush_timeout = flush_timeout
        self._uplink = uplink
        self._wire = wire
        self._io = ThreadPoolExecutor(1, thread_name_prefix="spool-io")
        self.backlog = Spool(path / "backlog", max_bytes=cfg.max_bytes, policy=cfg.policy)
        self.wal = Spool(path / "wal", max_bytes=2**62, policy="drop_newest") if self.always else None
        self.seq = SeqCounter(path / "seq")
        self._live: deque[tuple[SpoolRecord, int | None]] = deque()
        self._inflight: dict[int, _Sent] = {}
        self._job = _Job()
        self._io_busy = False
        self._io_idle = asyncio.Event()
        self._io_idle.set()
        self._wake = asyncio.Event()
        self._more_backlog = True
        self._opened = False
        self._closing = False
        self._closed = False
        self._replay_inflight = 0
        self._dropping = False
        self._late_logged = False
        self._dirty = False  # outage mode: appended but not yet fsync'ed (synced every second)
        self.delivered = 0
        self.replayed = 0
        self.spooled = 0
        self._dropped_seen = 0  # spool drops already logged (one log line per episode)
        self._replay_started: float | None = None  # monotonic start of the replay under way
        self._replay_count = 0
        #: seqs of spilled messages in flight -> their backlog position once the replay has handed them out
        self._spilled: dict[int, int | None] = {}
        #: seqs of spilled messages acknowledged live: their copy on disk is acknowledged, never sent
        self._acked_spilled: set[int] = set()
        uplink.set_delivery(self._on_ack, self._on_lost, self._on_data_gate)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the spools (verifying every record; damage is skipped and counted) and the seq counter."""
        await asyncio.get_running_loop().run_in_executor(self._io, self._open_sync)
        self._opened = True
        if self.backlog.messages:
            log.info(
                "spool %s: %d message(s) from before the restart will be replayed",
                self.backlog.path,
                self.backlog.messages,
            )
        if self.seq.gap:
            log.warning(
                "seq continues at %d after an unclean stop: numbers %d..%d were never used",
                self.seq.next,
                *self.seq.gap,
            )

    def _open_sync(self) -> None:
        self.backlog.open()
        self._dropped_seen = self.backlog.dropped_messages  # drops from before this start were logged then
        if self.wal is not None:
            self.wal.open()
            left = self.wal.take(self.wal.messages)
            redo = [rec for _, rec in left if rec.seq > self.backlog.last_seq]
            if redo:
                self.backlog.append(redo, sync=True)
            self.wal.ack([pos for pos, _ in left])
            self.wal.commit(sync=True)
        floor = max(self.backlog.last_seq, self.wal.last_seq if self.wal else 0)
        self.seq.open(floor)

    async def run(self) -> None:
        """Replay the backlog and watch PUBACK deadlines, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._replay_forever(), name="spool-replay")
            tg.create_task(self._watch_forever(), name="spool-watch")

    async def close(self) -> None:
        """Stop replaying; give RAM messages up to ``flush_timeout`` to be acknowledged; spool what is left;
        sync and close the files. Call before the uplink stops."""
        if self._closed or not self._opened:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flush_timeout
        while (
            (self._live or any(s.backlog_pos is None for s in self._inflight.values()))
            and self._uplink.connected
            and loop.time() < deadline
        ):
            await asyncio.sleep(0.02)
        self._on_lost()
        await self._drain_io()
        self._closed = True

        def close_files() -> None:
            self.backlog.close()
            if self.wal is not None:
                self.wal.close()
            self.seq.close()

        await loop.run_in_executor(self._io, close_files)
        self._io.shutdown(wait=True)

    def link_changed(self, connected: bool) -> None:
        """The uplink's connection came up (replay may start) or went down."""
        if connected:
            self._more_backlog = True
            if self.backlog.messages and self._replay_started is None and not self._closing:
                self._replay_started = time.monotonic()
                self._replay_count = self.replayed
                log.info(
                    "spool %s: replaying %d message(s) (%d samples) at up to %g/s beside live data",
                    self.path,
                    self.backlog.messages,
                    self.backlog.samples,
                    float(self.cfg.replay_rate),
                )
            self._pump()
            self._wake.set()

    def _on_data_gate(self, open_: bool) -> None:
        """The uplink stopped taking data (byte budget spent) or takes it again."""
        if open_:
            self.link_changed(True)
            return
        self._spill()
        self._kick()

    def _note_replay_end(self) -> None:
        if self._replay_started is not None and not self.backlog.messages and not self._replay_inflight:
            log.info(
                "spool %s: replay done, %d message(s) in %.1f s",
                self.path,
                self.replayed - self._replay_count,
                time.monotonic() - self._replay_started,
            )
            self._replay_started = None

    async def _drain_io(self) -> None:
        while self._io_busy or self._job:
            self._kick()
            self._io_idle.clear()
            await self._io_idle.wait()

    # --------------------------------------------------------------------------------------------- submit

    def next_seq(self) -> int:
        """The sequence number of the next message (never repeats, also across restarts)."""
        return self.seq.take(self._io)

    def _room_in_ram(self) -> bool:
        up = self._uplink
        return (up.accepts_data or not up.settled) and not self._closing and len(self._live) < self.max_queued

    def submit(self, seq: int, topic: str, body: bytes, *, samples: int, qos: int = 1) -> None:
        """Take over one message (``body``: the encoded payload, opaque here); never blocks, never raises for
        the link's state. From here the message is either acknowledged by the broker or counted as dropped."""
        rec = SpoolRecord(seq, topic, body, samples, time.time_ns(), qos)
        if self.always:
            self._job.wal_records.append(rec)
        elif self._room_in_ram():
            self._live.append((rec, None))
            self._pump()
            return
        else:
            self._spill(rec)
        self._kick()

    def _spill(self, rec: SpoolRecord | None = None, wal_pos: int | None = None) -> None:
        """Everything unacknowledged in RAM, and ``rec``, to the backlog in seq order (with the next file work).
        Live messages in flight stay in flight; their PUBACK or the link's loss decides what becomes of their
        copy on disk (:meth:`_done`, :meth:`_on_lost`)."""
        back = list(self._live)
        self._live.clear()
        for sent in self._inflight.values():
            if sent.backlog_pos is None and sent.rec.seq not in self._spilled:
                self._spilled[sent.rec.seq] = None
                back.append((sent.rec, sent.wal_pos))
                sent.wal_pos = None  # the backlog has it now
        if rec is not None:
            back.append((rec, wal_pos))
        self._job.backlog_records.extend(r for r, _ in back)  # _kick puts the job's records in seq order
        self._job.wal_acks.extend(pos for _, pos in back if pos is not None)

    # ------------------------------------------------------------------------------------------- sending

    def _send(self, rec: SpoolRecord, *, backlog_pos: int | None, wal_pos: int | None) -> bool:
        topic, payload = self._wire(rec.topic, rec.payload, backlog_pos is not None)
        mid = self._uplink.try_send(topic, payload, qos=rec.qos)
        if mid is None:
            return False
        if mid == 0:  # QoS 0: nothing will acknowledge it
            self._done(_Sent(rec, backlog_pos, wal_pos, 0.0))
        else:
            self._inflight[mid] = _Sent(rec, backlog_pos, wal_pos, time.monotonic())
            if backlog_pos is not None:
                self._replay_inflight += 1
        return True

    def _pump(self) -> None:
        while self._live and self._uplink.accepts_data and len(self._inflight) < self.max_inflight:
            rec, wal_pos = self._live[0]
            if not self._send(rec, backlog_pos=None, wal_pos=wal_pos):
                break
            self._live.popleft()

    def _done(self, sent: _Sent) -> None:
        self.delivered += 1
        if sent.backlog_pos is None and sent.rec.seq in self._spilled:  # a live message with a copy on disk
            pos = self._spilled.pop(sent.rec.seq)
            if pos is None:  # not handed out by the replay yet: acknowledged when it is
                self._acked_spilled.add(sent.rec.seq)
            else:
                self._job.backlog_acks.append(pos)
                self._kick()
        if sent.backlog_pos is not None:
            self.replayed += 1
            self._job.backlog_acks.append(sent.backlog_pos)
            self._kick()
        elif sent.wal_pos is not None:
            self._job.wal_acks.append(sent.wal_pos)
            self._kick()

    def _on_ack(self, mid: int) -> None:
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return
        if sent.backlog_pos is not None:
            self._replay_inflight -= 1
        self._done(sent)
        self._pump()
        self._wake.set()

    def _on_lost(self) -> None:
        """The link is gone: replayed messages in flight are handed out again later, live ones go to disk."""
        if self._closed:
            return
        back: list[tuple[SpoolRecord, int | None]] = []
        for sent in self._inflight.values():
            if sent.backlog_pos is not None:
                self._job.requeue.append(sent.backlog_pos)
            elif sent.rec.seq in self._spilled:  # its copy on disk is replayed
                pos = self._spilled.pop(sent.rec.seq)
                if pos is not None:
                    self._job.requeue.append(pos)
            else:
                back.append((sent.rec, sent.wal_pos))
        self._inflight.clear()
        self._replay_inflight = 0
        back.extend(self._live)
        self._live.clear()
        self._job.backlog_records.extend(rec for rec, _ in back)  # _kick puts them in seq order
        self._job.wal_acks.extend(pos for _, pos in back if pos is not None)
        self._more_backlog = True
        self._kick()

    # ------------------------------------------------------------------------------------------ file work

    def _kick(self) -> None:
        if self._io_busy or not self._job or self._closed:
            if not self._io_busy and not self._job:
                self._io_idle.set()
            return
        job, self._job = self._job, _Job()
        # every path to the backlog (an overflow, a closed gate, a lost link) only appends to the job: this is
        # the one sort that keeps the backlog in seq order
        job.backlog_records.sort(key=lambda r: r.seq)
        self._io_busy = True
        self._io_idle.clear()
        fut = asyncio.get_running_loop().run_in_executor(self._io, self._do_io, job)
        fut.add_done_callback(self._io_done)

    def _do_io(self, job: _Job) -> list[tuple[int, SpoolRecord]]:
        backlog, wal = self.backlog, self.wal
        if job.requeue:
            backlog.requeue(job.requeue)
        if job.backlog_acks:
            backlog.ack(job.backlog_acks)
        written: list[tuple[int, SpoolRecord]] = []
        if wal is not None and job.wal_records:
            wal.append(job.wal_records, sync=True)
            written = wal.take(len(job.wal_records))
        if job.backlog_records:
            backlog.append(job.backlog_records, sync=self.always)
            self._dirty = not self.always
        if wal is not None and job.wal_acks:
            wal.ack(job.wal_acks)
            wal.commit(sync=False)
        backlog.commit(sync=self.always)
        return written

    def _io_done(self, fut: asyncio.Future[list[tuple[int, SpoolRecord]]]) -> None:
        self._io_busy = False
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            log.error("spool I/O failed: %s", exc, exc_info=exc)
        else:
            for pos, rec in fut.result():
                if self._room_in_ram():
                    self._live.append((rec, pos))
                else:
                    self._spill(rec, pos)
            self._pump()
        self._more_backlog = True
        self._note_drops()
        self._note_replay_end()
        self._wake.set()
        self._kick()

    def _note_drops(self) -> None:
        b = self.backlog
        full = b.dropped_messages > self._dropped_seen
        self._dropped_seen = b.dropped_messages
        if full and not self._dropping:
            self._dropping = True
            log.warning(
                "spool full (%d bytes, spool.max_bytes): %s applies; see dropped_messages/samples",
                b.max_bytes,
                b.policy,
            )
        elif self._dropping and b.bytes < 0.9 * b.max_bytes:
            self._dropping = False
            log.info(
                "spool below its quota again; %d message(s) (%d samples) dropped in total",
                b.dropped_messages,
                b.dropped_samples,
            )

    # ---------------------------------------------------------------------------------------------- tasks

    async def _replay_forever(self) -> None:
        loop = asyncio.get_running_loop()
        rate = float(self.cfg.replay_rate)
        tokens, last = 1.0, loop.time()
        window = self.max_inflight // 2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._uplink.accepts_data and not self._closing and self._more_backlog:
                room = window - self._replay_inflight
                if room <= 0:
                    break
                now = loop.time()
                tokens, last = min(max(rate, 1.0), tokens + (now - last) * rate), now
                if tokens < 1.0:
                    await asyncio.sleep((1.0 - tokens) / rate)
                    continue
                n = max(1, min(int(tokens), room, 64))
                batch = await loop.run_in_executor(self._io, self.backlog.take, n)
                if len(batch) < n:
                    self._more_backlog = False
                tokens -= len(batch)
                unsent = []
                for pos, rec in batch:
                    if rec.seq in self._acked_spilled:  # delivered live after it was spilled
                        self._acked_spilled.discard(rec.seq)
                        self._job.backlog_acks.append(pos)
                        self._kick()
                    elif rec.seq in self._spilled:  # still in flight live: its PUBACK or its loss decides
                        self._spilled[rec.seq] = pos
                    elif self._closing or not self._send(rec, backlog_pos=pos, wal_pos=None):
                        unsent.append(pos)
                if unsent:
                    self._job.requeue.extend(unsent)
                    self._more_backlog = True
                    self._kick()
                    break

    async def _watch_forever(self) -> None:
        """A PUBACK later than ``ack_timeout``: the link is not delivering; close it (reconnect, spool)."""
        loop = asyncio.get_running_loop()
        next_sync = loop.time() + _SYNC_INTERVAL
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            if self._dirty and loop.time() >= next_sync and not self._closed:
                self._dirty = False
                next_sync = loop.time() + _SYNC_INTERVAL
                await loop.run_in_executor(self._io, self.backlog.sync)
            if not self._inflight:
                self._late_logged = False
                continue
            oldest = next(iter(self._inflight.values()))
            late = time.monotonic() - oldest.at
            if late > self.ack_timeout and self._uplink.connected:
                log.warning(
                    "no PUBACK for %.1f s (spool.ack_timeout %gs): closing the MQTT link; %d message(s) "
                    "go to the spool",
                    late,
                    self.ack_timeout,
                    len(self._inflight) + len(self._live),
                )
                self._uplink.drop_connection(f"no PUBACK within {self.ack_timeout:g}s")

    # ---------------------------------------------------------------------------------------------- status

    def stats(self) -> dict[str, Any]:
        """The spool and delivery counters for the status API and the metrics topic."""
        b = self.backlog
        age = b.oldest_age()
        return {
            "path": str(self.path),
            "durability": self.cfg.durability,
            "policy": b.policy,
            "max_bytes": b.max_bytes,
            "messages": b.messages,
            "bytes": b.bytes,
            "samples": b.samples,
            "oldest_age_s": None if age is None else round(age, 3),
            "ram_queued": len(self._live),
            "inflight": len(self._inflight),
            "delivered": self.delivered,
            "replayed": self.replayed,
            "dropped_messages": b.dropped_messages,
            "dropped_samples": b.dropped_samples,
            "dropped_by_reason": b.dropped_by_reason(),
            "lost_segments": b.lost_segments,
            "lost_messages": b.lost_messages,
            "damaged_records": b.damaged_records,
            "damaged_bytes": b.damaged_bytes,
            "next_seq": self.seq.next,
            "seq_gap": list(self.seq.gap) if self.seq.gap else None,
            "seq_unsure": list(self.seq.unsure) if self.seq.unsure else None,
        }


__all__ = ["Delivery", "SeqCounter", "SpoolError", "plain_wire"]
