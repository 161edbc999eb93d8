"""Sequence numbers of data messages that never repeat, also across restarts and crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_SEQ_BLOCK = 1000


class SeqCounter:
    """Sequence numbers that never repeat across restarts.

    ``seq`` (file, JSON) holds the next number and a reservation: numbers are handed out from blocks of
    1000 reserved on disk ahead of use, so a crash skips at most the rest of one block (``gap``) and never
    reuses a number. A clean stop records the exact next number: no gap.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next = 1
        self.reserved = 1
        self.gap: tuple[int, int] | None = None  # numbers never used because of an unclean stop
        self._reserving = False
        self._lock = threading.Lock()  # the loop (rarely) and the I/O thread both write the file
        self._on_disk = 0  # the reservation last written: a late write never lowers it

    def open(self, floor: int) -> None:
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(self.path.read_text())
        nxt = int(state.get("next", 1))
        if not state.get("clean", True):
            start = max(int(state.get("reserved", nxt)), nxt)
            if start > nxt:
                self.gap = (nxt, start - 1)
            nxt = start
        self.next = max(nxt, floor + 1, 1)
        self.reserved = self.next + _SEQ_BLOCK
        self._write(clean=False)

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
        if self.next >= self.reserved:  # the reservation ran behind: do it now, rare
            self.reserved += _SEQ_BLOCK
            self._write(clean=False)
        elif self.next > self.reserved - _SEQ_BLOCK // 2 and not self._reserving:
            self._reserving = True
            target = self.reserved + _SEQ_BLOCK

            def reserve() -> None:
                self._write(clean=False, reserved=target)

            fut = asyncio.get_running_loop().run_in_executor(io, reserve)
            fut.add_done_callback(lambda f, t=target: self._reserved(f, t))
        return seq

    def _reserved(self, fut: asyncio.Future[None], target: int) -> None:
        self._reserving = False
        if not fut.cancelled() and fut.exception() is None:
            self.reserved = max(self.reserved, target)

    def close(self) -> None:
        self._write(clean=True, reserved=self.next)
