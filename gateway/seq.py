"""Sequence numbers of data messages that never repeat, also across restarts and crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import os
import struct
import threading
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.seq")

_SEQ_BLOCK = 1000
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_USED = struct.Struct("<QI")  # a number and the CRC32 of it and the boot id
_USED_SIZE = 16 + 2 * _USED.size  # boot id, then two slots written alternately


def _boot_id() -> bytes | None:
    with contextlib.suppress(OSError, ValueError):
        return uuid.UUID(_BOOT_ID.read_text().strip()).bytes
    return None


class SeqCounter:
    """Sequence numbers that never repeat across restarts.

    ``seq`` (file, JSON) holds the next number and a reservation: numbers are handed out from blocks of
    1000 reserved on disk ahead of use, so a crash skips at most the rest of one block and never reuses a
    number. A clean stop records the exact next number: no gap.

    ``seq.used`` records the last number handed out, at every :meth:`take`, by a store into a shared memory
    map (no system call on the event loop). The page cache outlives a crashed process, so after a crash of
    the process (SIGKILL, OOM) ``gap`` starts right after the last number really used: numbers handed out
    and then lost in flight are never declared "never used". After a reboot (power loss, the boot id
    differs) the page may not have reached the disk: then the numbers between the last one known to be used
    and the reservation are reported as ``unsure`` (maybe used), not as a gap.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next = 1
        self.reserved = 1
        self.gap: tuple[int, int] | None = None  # numbers certainly never used because of an unclean stop
        self.unsure: tuple[int, int] | None = None  # numbers skipped that may have been used (after a reboot)
        self.last_used = 0  # the last number used before this start, as far as known
        self._reserving = False
        self._lock = threading.Lock()  # the loop (rarely) and the I/O thread both write the file
        self._on_disk = 0  # the reservation last written: a late write never lowers it
        self._used: mmap.mmap | None = None
        self._boot = b"\0" * 16

    @property
    def used_path(self) -> Path:
        return self.path.with_name(self.path.name + ".used")

    def open(self, floor: int) -> None:
        """Continue after the numbers used before; ``floor``: the largest number known to be used (e.g. the
        largest seq in the spool). Sets ``gap``/``unsure`` after an unclean stop (see the class docstring)."""
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(self.path.read_text())
        nxt = int(state.get("next", 1))
        used, same_boot = self._read_used()
        self.last_used = max(floor, used, nxt - 1, 0)
        if not state.get("clean", True):
            start = max(int(state.get("reserved", nxt)), nxt, self.last_used + 1)
            if start > self.last_used + 1:
                skipped = (self.last_used + 1, start - 1)
                if same_boot:
                    self.gap = skipped
                else:
                    self.unsure = skipped
                    log.warning("seq continues at %d after a reboot or power loss: numbers %d..%d were skipped; "
                                "some of them may have been used by messages lost with the power", start, *skipped)
            nxt = start
        self.next = max(nxt, floor + 1, 1)
        self.reserved = self.next + _SEQ_BLOCK
        self._write(clean=False)
        self._map_used()

    def _read_used(self) -> tuple[int, bool]:
        """The last number recorded in ``seq.used`` and whether it was recorded since this boot."""
        try:
            raw = self.used_path.read_bytes()
        except OSError:
            return 0, False
        boot = _boot_id()
        if len(raw) < _USED_SIZE:
            return 0, False
        best = 0
        for off in (16, 16 + _USED.size):
            value, crc = _USED.unpack_from(raw, off)
            if zlib.crc32(raw[off : off + 8], zlib.crc32(raw[:16])) == crc:
                best = max(best, value)
        return best, boot is not None and raw[:16] == boot

    def _map_used(self) -> None:
        self._boot = _boot_id() or b"\0" * 16
        fd = os.open(self.used_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, _USED_SIZE)
            self._used = mmap.mmap(fd, _USED_SIZE)
        finally:
            os.close(fd)
        self._used[:16] = self._boot
        for seq in (self.next - 2, self.next - 1):  # both slots valid for this boot
            self._note(max(0, seq))

    def _note(self, seq: int) -> None:
        """Record ``seq`` as used: a store into the page cache, alternating slots so that a process killed
        halfway through one store leaves the other slot (the previous number) intact."""
        m = self._used
        if m is None:
            return
        _USED.pack_into(m, 16 + (seq & 1) * _USED.size, seq,
                        zlib.crc32(struct.pack("<Q", seq), zlib.crc32(self._boot)))

    def _write(self, *, clean: bool, reserved: int | None = None) -> None:
        with self._lock:
            value = reserved or self.reserved
            if not clean:
                if value <= self._on_disk:  # a reservation overtaken by a larger one: nothing to add
                    return
                self._on_disk = value
            tmp = self.path.with_name(self.path.name + ".tmp")
            data = json.dumps({"next": self.next, "reserved": value, "clean": clean})
            with open(tmp, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def take(self, io: ThreadPoolExecutor) -> int:
        """The next number (loop thread). Reserves the next block in ``io`` when half of this one is used."""
        seq = self.next
        self.next += 1
        self._note(seq)
        if self.next >= self.reserved:  # the reservation ran behind: do it now, rare
            self.reserved += _SEQ_BLOCK
            self._write(clean=False)
        elif self.next > self.reserved - _SEQ_BLOCK // 2 and not self._reserving:
            self._reserving = True
            target = self.reserved + _SEQ_BLOCK

            def reserve() -> None:
                self._write(clean=False, reserved=target)

            fut = asyncio.get_running_loop().run_in_executor(io, reserve)
            fut.add_done_callback(lambda f: self._reserved(f, target))
        return seq

    def _reserved(self, fut: asyncio.Future[None], target: int) -> None:
        self._reserving = False
        if not fut.cancelled() and fut.exception() is None:
            self.reserved = max(self.reserved, target)

    def close(self) -> None:
        self._write(clean=True, reserved=self.next)
        if self._used is not None:
            self._used.flush()
            self._used.close()
            self._used = None
