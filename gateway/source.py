"""One source task: owns one driver, polls it on schedule, writes its ring buffer, keeps its status.

The engine side of the driver contract: connect with capped exponential backoff, a timeout around every
driver call, fixed-rate poll scheduling (a slow poll skips slots instead of drifting or piling up), one log
line when a device fails and one when it recovers, counters for everything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gateway.batch import Batch, Quality
from gateway.driver import DeviceUnavailable, Driver, DriverContext, DriverSpec, Shared, StreamingDriver, TagMeta
from gateway.logsafe import ChangeLog, safe
from gateway.reduce import integer_tags
from gateway.ringbuffer import RingBuffer
from gateway.status import AssetStatus, Backoff
from gateway.writes import WriteFailed, classify

if TYPE_CHECKING:
    from gateway.config.models import AssetBase

log = logging.getLogger("gateway.source")

#: error code the engine puts on every tag of a source that went away
ERR_DISCONNECTED = -1
#: failures that mean "the device is not there": reconnect with backoff
CONNECTION_ERRORS = (DeviceUnavailable, TimeoutError, OSError, ConnectionError)
#: writes waiting for the source task, per asset; more are refused as busy
WRITE_QUEUE = 16


class AssetRuntime:
    """Everything the gateway keeps for one configured asset."""

    def __init__(
        self,
        cfg: AssetBase,
        spec: DriverSpec,
        *,
        buffer_seconds: float,
        state_dir: Path,
        shared: Shared,
        on_state: Callable[["AssetRuntime"], None] | None = None,
        log_summary_interval: float = 60.0,
    ) -> None:
        self.cfg = cfg
        self.id: str = cfg.id
        self.source = cfg.source
        self.tags = list(cfg.tags)
        self.tag_index = {t.name: i for i, t in enumerate(self.tags)}
        #: per tag: published at float32 precision / as a JSON integer (tag metadata for every uplink's
        #: reducer, shared by reference with the driver, which may refine it: see gateway.driver.TagMeta)
        self.meta = TagMeta(np.zeros(len(self.tags), dtype=bool), integer_tags(self.tags))
        self.driver: Driver = spec.create(cfg.source, self.tags, DriverContext(self.id, state_dir, self.meta, shared))
        self.ring = RingBuffer.for_rate(len(self.tags), buffer_seconds, cfg.source.poll)
        self.status = AssetStatus()
        #: the driver pushes batches (``subscribe()``) instead of being polled
        self.streaming = isinstance(self.driver, StreamingDriver)
        self._on_state = on_state
        #: state changes (tags bad / good again, down / up again) are rate-limited: a flapping device logs
        #: its first changes and then one summary per ``gateway.log_summary_interval``
        self.changes = ChangeLog(log, f"asset {self.id}", log_summary_interval)
        self._bad_texts: frozenset[str] = frozenset()
        #: a device that accepts connections but fails every poll must not be retried at poll rate nor
        #: logged per retry: the backoff resets, and recovery is logged, only after a good poll
        self._session_good = False
        self._failure_logged = False
        self._down_since: float | None = None
        #: called after every batch written to the ring (a publisher that sends the asset right after its polls)
        self.batch_listeners: list[Callable[[AssetRuntime], None]] = []
        #: monotonic time the last batch was handed over by the driver (read done)
        self.read_done = float("-inf")
        #: set by the engine before it cancels the task: a library that swallows a cancellation (asyncua's
        #: own wait_for can) must not keep the source running after shutdown began
        self.stopping = False
        self._publish_failed = False
        #: writes waiting for the source task: (tag, value, future of the read-back value)
        self._writes: asyncio.Queue[tuple[str, Any, asyncio.Future[Any]]] = asyncio.Queue(WRITE_QUEUE)

    # -- state -------------------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if self.status.set_state(state) and self._on_state:
            self._on_state(self)

    def _went_down(self, exc: BaseException, *, during: str, traceback: bool = False) -> None:
        text = _describe(exc)
        self.status.record_error(f"{during}: {text}")
        if self.status.state != "disconnected" and not self._failure_logged:
            self._failure_logged = True
            if traceback:
                self.changes.change("driver error", logging.ERROR, "driver error during %s (%s); retrying with "
                                    "backoff", during, safe(text), exc_info=True)  # fmt: skip
            else:
                self.changes.change("disconnected", logging.WARNING, "%s failed (%s); retrying with backoff",
                                    during, safe(text))  # fmt: skip
            if self.ring.head.any():
                self.ring.write(
                    Batch.all_bad(len(self.tags), time.time_ns(), ERR_DISCONNECTED, f"disconnected: {text}")
                )
        self._set_state("disconnected")

    def _failed(self, exc: Exception, *, during: str) -> None:
        """A connect or poll failed: a driver bug (not a connection error) gets its traceback, once."""
        self._went_down(exc, during=during, traceback=not isinstance(exc, CONNECTION_ERRORS))

    # -- the task ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, poll until the connection fails, reconnect with backoff; forever (until cancelled)."""
        backoff = Backoff(self.source.retry_max)
        down_since: float | None = None
        try:
            while not self.stopping:
                try:
                    async with asyncio.timeout(self.source.timeout):
                        await self.driver.connect()
                except Exception as exc:  # a driver bug must not take the gateway down either
                    self.status.connect_failures += 1
                    self._failed(exc, during="connect")
                    down_since = down_since or time.monotonic()
                    await self._close()
                    self.changes.tick()
                    await asyncio.sleep(backoff.next())
                    continue
                if down_since is not None:
                    self.status.reconnects += 1
                    self._down_since = self._down_since or down_since  # logged at the first good poll
                elif self.status.state == "connecting":
                    log.info("asset %s: connected (%s)", self.id, self.source.driver)
                down_since = None
                self._session_good = False
                self._set_state("connected")
                try:
                    if self.streaming:
                        await self._receive_forever()
                    else:
                        await self._poll_forever()
                except Exception as exc:
                    self.status.poll_errors += 1
                    self._failed(exc, during="poll")
                down_since = time.monotonic()
                await self._close()
                if self._session_good:  # it worked for a while: retry at once, then back off
                    backoff.reset()
                    await asyncio.sleep(backoff.next(limit=self.source.poll))
                else:  # connects but never polls: capped exponential backoff like a refused connect
                    await asyncio.sleep(backoff.next())
        finally:
            await self._close()
            self._set_state("stopped")

    async def _receive_forever(self) -> None:
        """Stream mode: the driver pushes batches (OPC UA subscriptions, serial instruments that stream).

        The driver's ``subscribe()`` yields a batch whenever values arrive; it raises DeviceUnavailable when
        the connection is lost. No timeout applies between batches: a quiet device is not a dead one (the
        driver detects dead links with its own keepalive and raises). Queued writes are served between two
        batches, while the stream is outside the driver; a driver whose protocol multiplexes requests
        (``writes_during_stream``) gets them at once, from a second task, while its ``subscribe()`` waits.
        """
        driver = self.driver
        assert isinstance(driver, StreamingDriver)
        loop = asyncio.get_running_loop()
        last = loop.time()
        concurrent = driver.writes_during_stream
        writer = asyncio.create_task(self._serve_writes(None), name=f"writes:{self.id}") if concurrent else None
        stream = driver.subscribe()
        try:
            async for batch in stream:
                now = loop.time()
                self._accept(batch, now - last)
                last = now
                if not concurrent and (lost := await self._serve_queued()) is not None:
                    raise lost
        finally:
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            aclose = getattr(stream, "aclose", None)  # an async generator: run its cleanup before close()
            if aclose is not None:
                await aclose()

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.source.poll
        next_at = loop.time()
        while not self.stopping:
            started = loop.time()
            async with asyncio.timeout(self.source.timeout):
                batch = await self.driver.read()
            self._accept(batch, loop.time() - started)
            next_at += interval
            now = loop.time()
            if next_at < now:
                missed = int((now - next_at) // interval) + 1
                self.status.overruns += missed
                next_at += missed * interval
            lost = await self._serve_writes(next_at)
            if lost is not None:
                raise lost

    # -- writes ----------------------------------------------------------------------------------------
    async def write(self, tag: str, value: Any) -> Any:
        """Write ``value`` to ``tag`` through the source task; the driver's read-back value.

        Raises :class:`~gateway.writes.WriteFailed`: at once when the asset is not connected or too many
        writes are queued; otherwise with what the driver's write ended in (see :func:`gateway.writes.classify`).
        """
        if self.status.state != "connected":
            why = f" ({self.status.last_error})" if self.status.last_error else ""
            raise WriteFailed("unavailable", f"asset {self.id!r} is {self.status.state}{why}; nothing was written")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._writes.put_nowait((tag, value, future))
        except asyncio.QueueFull:
            raise WriteFailed("busy", f"asset {self.id!r} has {WRITE_QUEUE} writes waiting; try again") from None
        return await future

    async def _serve_writes(self, until: float | None) -> BaseException | None:
        """Run queued writes until loop time ``until`` (forever when None), between polls.

        Returns the connection error a write ended in (the caller reconnects), else None at ``until``.
        """
        loop = asyncio.get_running_loop()
        if until is not None and self._writes.empty() and loop.time() >= until:
            return None  # polling as fast as the device answers: no timer, no queue waiter per poll
        while True:
            try:
                async with asyncio.timeout_at(until):
                    item = await self._writes.get()
            except TimeoutError:
                return None
            lost = await self._serve_one(*item)
            if lost is not None and until is not None:
                return lost  # polling: reconnect (a concurrent stream notices a dead link itself)
            if until is not None and loop.time() >= until:
                return None

    async def _serve_queued(self) -> BaseException | None:
        """Run the writes queued now (stream mode, between two batches); the connection error one ended in."""
        while not self._writes.empty():
            lost = await self._serve_one(*self._writes.get_nowait())
            if lost is not None:
                return lost
        return None

    async def _serve_one(self, tag: str, value: Any, future: asyncio.Future[Any]) -> BaseException | None:
        """One write and its read-back, its outcome set on ``future``; the connection error it ended in."""
        if future.done():  # the caller gave up before its turn
            return None
        limit = 2 * self.source.timeout  # write and read back: two round trips
        try:
            async with asyncio.timeout(limit):
                result = await self.driver.write(tag, value)
        except asyncio.CancelledError:
            if not future.done():
                future.set_exception(
                    WriteFailed(
                        "unavailable", f"asset {self.id!r} is stopping; the write may or may not have been applied"
                    )
                )
            raise
        except Exception as exc:
            failed = classify(exc, asset=self.id, timeout=limit)
            if failed.unexpected:
                log.exception("asset %s: driver error during a write", self.id)
            if not future.done():
                future.set_exception(failed)
            return exc if isinstance(exc, CONNECTION_ERRORS) else None
        if not future.done():
            future.set_result(result)
        return None

    def _fail_writes(self, text: str) -> None:
        while not self._writes.empty():
            _, _, future = self._writes.get_nowait()
            if not future.done():
                future.set_exception(WriteFailed("unavailable", f"asset {self.id!r}: {text}; nothing was written"))

    def _accept(self, batch: Batch, latency: float) -> None:
        self.read_done = time.monotonic()
        self.ring.write(batch)
        self._session_good = True
        if self._down_since is not None:
            self.changes.change("connected again", logging.INFO, "connected again after %.1f s",
                                time.monotonic() - self._down_since)  # fmt: skip
            self._down_since = None
        self._failure_logged = False
        bad = batch.quality == Quality.BAD
        self.status.record_poll(latency, int(np.count_nonzero(bad)))
        self._log_quality(batch, bad)
        self.changes.tick()
        for listener in self.batch_listeners:
            try:
                listener(self)
            except Exception:  # a publishing bug is not the device's fault: no reconnect, the timer retries
                if not self._publish_failed:
                    log.exception("asset %s: publishing after a poll failed", self.id)
                self._publish_failed = True
            else:
                self._publish_failed = False

    def _log_quality(self, batch: Batch, bad: np.ndarray) -> None:
        """Log (rate-limited) when the set of reasons for bad tags changes, naming the tags by their plan names.

        A subscription or stream batch (``index`` set) holds only some tags: the asset's state is then the
        ring's newest quality of every tag, not the batch's.
        """
        if batch.index is None and not self._bad_texts and not bad.any():
            return  # all good, as before: nothing to log (the usual poll)
        errors, error_text = batch.errors, batch.error_text
        if batch.index is not None:
            _, _, quality, has = self.ring.last()
            bad = has & (quality == Quality.BAD)
            errors, error_text = self.ring.last_error, self.ring.error_text
        n_bad = int(np.count_nonzero(bad))
        texts = frozenset(error_text[c] for c in np.unique(errors[bad]).tolist() if c in error_text)
        if texts != self._bad_texts:
            if texts:
                names = [self.tags[i].name for i in np.flatnonzero(bad)[:5].tolist()]
                more = "" if n_bad <= 5 else f" and {n_bad - 5} more"
                joined = "; ".join(sorted(texts))
                self.changes.change("tags bad", logging.WARNING, "%d tag(s) bad (%s%s): %s", n_bad,
                                    ", ".join(names), more, safe(joined, 500))  # fmt: skip
                self.status.record_error(joined)
            else:
                self.changes.change("tags good", logging.INFO, "all tags good again")
            self._bad_texts = texts

    async def _close(self) -> None:
        self._fail_writes("the connection was lost before the write's turn")
        try:
            async with asyncio.timeout(self.source.timeout):
                await self.driver.close()
        except Exception:  # close must not raise per contract; a misbehaving driver must not stop us
            log.debug("asset %s: driver close raised", self.id, exc_info=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return (
        f"{type(exc).__name__}: {text}"
        if text and not isinstance(exc, DeviceUnavailable)
        else (text or type(exc).__name__)
    )
