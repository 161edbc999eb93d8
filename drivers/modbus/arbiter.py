"""One bus arbiter per serial port (or RTU-over-TCP endpoint), shared by every asset that names it.

Several slaves on one RS-485 line are configured as separate assets (one ``unit`` each) that name the same
``port``. Each asset's driver gets the same :class:`BusArbiter` from :func:`arbiter_for`, which guarantees:

- **one port open**: the link is opened by the first driver that connects and closed when the last one
  closes; a broken link (adapter unplugged) is reopened by the next connect;
- **one transaction on the wire at a time**, first come first served, with the 3.5-character silent
  interval (t3.5) kept between the end of one frame and the start of the next;
- **a per-slave timeout**: a silent slave holds the bus for its own ``response_timeout`` only, then the bus
  stays quiet until ``silent_after_timeout`` after that request (libmodbus slaves ignore the frame after a
  request for another unit while they wait for its answer); a request is tried ``1 + retries`` times;
- **demotion**: a slave that failed ``demote_after`` transactions in a row is *demoted*: its requests fail at
  once, without touching the wire, until ``slow_retry`` seconds after its last failure; then one request is
  let through. The other slaves keep their poll rates.

How this fits the engine (``gateway/source.py``): a silent or demoted slave raises
:class:`~gateway.driver.DeviceUnavailable`, so the engine marks that asset disconnected, logs it once and
reconnects with its capped backoff. The driver's ``connect()`` sends one probe request through the arbiter,
so while a slave is demoted every reconnect attempt fails immediately (no bus time, no log line) and the
probe that is let through every ``slow_retry`` (one try, no retries) is the only traffic the dead slave
costs. The engine's ``retry_max`` bounds how late after ``slow_retry`` that probe happens.

The arbiter also estimates the bus load of all registered slaves when the port is opened and logs one
WARNING when the configured poll rates need more time on the wire than there is (see :class:`BusLoad`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.modbus.base import BadResponse
from drivers.modbus.rtu_frame import (
    CRC_ERROR,
    MALFORMED_FRAME,
    TRUNCATED_FRAME,
    Outcome,
    frame,
    scan_response,
)
from drivers.modbus.rtu_link import Link
from gateway.driver import DeviceUnavailable, Shared

log = logging.getLogger("drivers.modbus.arbiter")

#: Lower bound of the silence that ends an incomplete or corrupt answer: USB serial adapters deliver bytes
#: in chunks up to 16 ms apart, so a shorter pause inside one frame is not yet "the slave stopped".
RX_SILENCE_FLOOR = 0.02


@dataclass(frozen=True, slots=True)
class SlavePolicy:
    """Per-slave timing of an asset: wait ``response_timeout`` for an answer, send a request up to
    ``retries`` more times when no usable answer came, send nothing until ``silent_after_timeout`` after a
    request that timed out, demote after ``demote_after`` failed requests in a row, then let one request through every
    ``slow_retry`` seconds."""

    response_timeout: float
    demote_after: int
    slow_retry: float
    #: sends of a request again after no usable answer (timeout, CRC error, truncated, garbage)
    retries: int = 0
    #: bus silence after a timed-out request, so slaves that still wait for that answer are ready again
    silent_after_timeout: float = 0.0


@dataclass(slots=True)
class SlaveHealth:
    """Consecutive failures and demotion state of one unit id on the bus."""

    failures: int = 0
    demoted_until: float | None = None
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class SlaveLoad:
    """What one asset puts on the bus per poll: ``frames`` is ``(request bytes, answer bytes)`` per request."""

    unit: int
    poll: float
    frames: tuple[tuple[int, int], ...]


@dataclass(slots=True)
class BusStats:
    """Counters of one bus (port), for tests, logs and the status API."""

    transactions: int = 0
    answers: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    truncated: int = 0
    malformed: int = 0
    mismatched_answers: int = 0
    retries: int = 0
    stray_bytes: int = 0
    demoted_skips: int = 0
    per_unit: dict[int, dict[str, int]] = field(default_factory=dict)

    def count(self, unit: int, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        unit_stats = self.per_unit.setdefault(unit, {})
        unit_stats[what] = unit_stats.get(what, 0) + 1


@dataclass(slots=True)
class UnitCounters:
    """One slave's view of its bus counters, as the status API shows them (``driver_counters``)."""

    stats: BusStats
    unit: int

    def as_dict(self) -> dict[str, int]:
        mine = self.stats.per_unit.get(self.unit, {})
        fields = ("transactions", "answers", "timeouts", "crc_errors", "truncated", "malformed", "mismatched_answers",
                  "retries", "demoted_skips")
        out = {k: mine.get(k, 0) for k in fields}
        out["bus_stray_bytes"] = self.stats.stray_bytes
        return out


class BusLoad:
    """Seconds of wire time per second that the registered slaves' polling needs, with the arithmetic.

    Per request: ``(request bytes + answer bytes) x bits per character / baud`` plus two silent intervals
    (the slave's turnaround is at least t3.5, and t3.5 must pass after the answer); per slave, that times
    the polls per second. More than 1.0 s/s cannot be carried: polls will be skipped.
    """

    def __init__(self, name: str, baudrate: int, bits: float, t35: float, loads: list[SlaveLoad]) -> None:
        self.name, self.baudrate, self.bits, self.t35 = name, baudrate, bits, t35
        self.lines: list[str] = []
        total = 0.0
        for load in sorted(loads, key=lambda item: (item.unit, item.poll)):
            chars = sum(out + back for out, back in load.frames)
            wire = chars * bits / baudrate
            gaps = 2 * len(load.frames) * t35
            per_poll = wire + gaps
            per_second = per_poll / load.poll
            total += per_second
            self.lines.append(
                f"unit {load.unit} every {load.poll:g} s: {len(load.frames)} request(s), "
                f"{sum(o for o, _ in load.frames)} bytes out + {sum(b for _, b in load.frames)} bytes back = "
                f"{chars} chars x {bits:g} bits / {baudrate} baud = {wire * 1000:.1f} ms + "
                f"{2 * len(load.frames)} x {t35 * 1000:.2f} ms gaps = {per_poll * 1000:.1f} ms per poll "
                f"-> {per_second * 1000:.0f} ms/s"
            )
        self.seconds_per_second = total

    @property
    def overloaded(self) -> bool:
        return self.seconds_per_second > 1.0

    def text(self) -> str:
        head = (
            f"bus {self.name} at {self.baudrate} baud ({self.bits:g} bits per character) needs "
            f"{self.seconds_per_second:.2f} s of wire time per second ({self.seconds_per_second * 100:.0f} %)"
        )
        return head + ": " + "; ".join(self.lines)


class BusArbiter:
    """Serialises the transactions of every slave on one bus; see the module docstring.

    ``link_factory`` builds a fresh, unopened :class:`~drivers.modbus.rtu_link.Link`; ``t35`` is the
    silent interval in seconds (0 for RTU over TCP, where the converter times the serial side);
    ``baudrate`` and ``bits`` feed the bus-load estimate (``baudrate=0``: no estimate).
    """

    def __init__(
        self, name: str, settings: tuple[Any, ...], link_factory: Callable[[], Link],
        *, t35: float, baudrate: int = 0, bits: float = 11,
    ) -> None:  # fmt: skip
        self.name = name
        self.settings = settings
        self.t35 = t35
        self.baudrate = baudrate
        self.bits = bits
        self.stats = BusStats()
        self._link_factory = link_factory
        self._link: Link | None = None
        self._users: set[int] = set()
        self._loads: weakref.WeakKeyDictionary[Any, SlaveLoad] = weakref.WeakKeyDictionary()
        self._health: dict[int, SlaveHealth] = {}
        self._bus: asyncio.Lock | None = None
        self._opening: asyncio.Lock | None = None
        self._idle_at = 0.0
        self._sent_at = 0.0  # when the last request frame was written
        self._load_checked = False

    # -- registration and the shared link ----------------------------------------------------------------
    def register(self, owner: Any, load: SlaveLoad) -> None:
        """Declare a driver (weakly referenced) and its load; called at construction, before any connect."""
        self._loads[owner] = load

    def load(self) -> BusLoad:
        """The current load estimate of every registered slave."""
        return BusLoad(self.name, self.baudrate, self.bits, self.t35, list(self._loads.values()))

    @property
    def link_ok(self) -> bool:
        return self._link is not None and self._link.broken is None

    async def acquire(self, owner: Any) -> None:
        """Make sure the link is open (opening or reopening it); :class:`DeviceUnavailable` when it cannot be."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self.link_ok:
                if self._link is not None:
                    self._link.close()
                    self._link = None
                link = self._link_factory()
                try:
                    await link.open()
                except OSError as exc:
                    raise DeviceUnavailable(str(exc)) from exc
                self._link = link
                self._bus = asyncio.Lock()
                self._idle_at = 0.0
                if not self._load_checked and self.baudrate:
                    self._load_checked = True
                    self._warn_if_overloaded()
            self._users.add(id(owner))

    def release(self, owner: Any) -> None:
        """The driver is done with the link; the last one out closes it. Never raises."""
        self._users.discard(id(owner))
        if not self._users and self._link is not None:
            link, self._link = self._link, None
            link.close()

    def _warn_if_overloaded(self) -> None:
        load = self.load()
        if load.overloaded:
            log.warning(
                "%s; polls will be skipped: raise the baud rate, poll less often or read fewer registers",
                load.text(),
            )
        else:
            log.debug("%s", load.text())

    # -- health ---------------------------------------------------------------------------------------
    def health(self, unit: int) -> SlaveHealth:
        return self._health.setdefault(unit, SlaveHealth())

    def _check_demoted(self, unit: int) -> None:
        health = self.health(unit)
        if health.demoted_until is None:
            return
        wait = health.demoted_until - time.monotonic()
        if wait > 0:
            self.stats.count(unit, "demoted_skips")
            raise DeviceUnavailable(
                f"unit {unit} on {self.name} is demoted after {health.failures} failed requests in a row "
                f"(last: {health.last_error}); next try in {wait:.0f} s"
            )

    def _failed(self, unit: int, policy: SlavePolicy, text: str) -> None:
        health = self.health(unit)
        health.failures += 1
        health.last_error = text
        if health.failures >= policy.demote_after:
            health.demoted_until = time.monotonic() + policy.slow_retry

    def _succeeded(self, unit: int) -> None:
        health = self.health(unit)
        health.failures = 0
        health.demoted_until = None

    # -- transactions ---------------------------------------------------------------------------------
    async def transact(self, unit: int, pdu: bytes, policy: SlavePolicy) -> bytes:
        """Send ``pdu`` (function code + data) to ``unit`` and return its answer's PDU.

        A request without a usable answer is sent again up to ``policy.retries`` times (not the one probe a
        demoted slave is let through every ``slow_retry``: it is known to be silent); the bus is released
        between tries, so the other slaves' requests queued meanwhile go first. After a timeout (or a poll
        cancelled while waiting for the answer) nothing is sent until ``policy.silent_after_timeout`` after
        that request. Raises :class:`DeviceUnavailable` when the slave is demoted, the last try got no
        answer within ``policy.response_timeout`` or the link broke; :class:`~drivers.modbus.base.BadResponse`
        when the last try's answer is unusable (CRC error, truncated, malformed). Either counts as one failure
        toward demotion; any usable answer (an exception answer too) resets the count.
        """
        error: Exception | None = None
        tries = 1 if self.health(unit).demoted_until is not None else policy.retries + 1  # a probe: one try
        try:
            for attempt in range(tries):
                if attempt:
                    self.stats.count(unit, "retries")
                result = await self._try(unit, pdu, policy)
                if isinstance(result, bytes):
                    return result
                error = result
        except asyncio.CancelledError:  # the poll's timeout ended the retries: the failed tries still count
            if error is not None:
                self._failed(unit, policy, str(error))
            raise
        assert error is not None
        self._failed(unit, policy, error.text if isinstance(error, BadResponse) else str(error))
        raise error

    async def _try(self, unit: int, pdu: bytes, policy: SlavePolicy) -> bytes | Exception:
        """One transaction on the wire: the answer's PDU, or the exception its failure would raise."""
        self._check_demoted(unit)
        if self._bus is None or not self.link_ok:
            raise DeviceUnavailable(f"{self.name} is not open")
        async with self._bus:
            link = self._link
            if link is None or link.broken is not None:
                raise DeviceUnavailable(link.broken if link is not None else f"{self.name} is not open")
            self._check_demoted(unit)  # another asset on the same unit may have demoted it while we queued
            scan = None
            sent_before = self._sent_at
            try:
                scan = await self._exchange(link, unit, pdu, policy.response_timeout)
            finally:
                self._idle_at = max(time.monotonic(), link.last_rx) + self.t35
                unanswered = scan.outcome is Outcome.NOTHING if scan is not None else self._sent_at != sent_before
                if unanswered:  # timed out, or cancelled while waiting: slaves may still wait for the answer
                    self._idle_at = max(self._idle_at, self._sent_at + policy.silent_after_timeout)
        self.stats.count(unit, "transactions")
        if scan.outcome is Outcome.FOUND:
            self.stats.count(unit, "answers")
            self._succeeded(unit)
            return scan.pdu
        return self._classify(unit, scan.outcome, policy)

    async def _exchange(self, link: Link, unit: int, pdu: bytes, timeout: float) -> Any:
        now = time.monotonic()
        quiet_at = max(self._idle_at, link.last_rx + self.t35)
        if quiet_at > now:
            await asyncio.sleep(quiet_at - now)
        stray = link.take_rx()
        if stray:
            self.stats.stray_bytes += stray
        try:
            await link.send(frame(unit, pdu))
        except OSError as exc:
            raise DeviceUnavailable(str(exc)) from exc
        self._sent_at = time.monotonic()
        deadline = self._sent_at + timeout
        silence = max(3 * self.t35, RX_SILENCE_FLOOR)
        function = pdu[0]
        while True:
            scan = scan_response(link.rx, unit, function)
            if scan.outcome is Outcome.FOUND:
                self.stats.stray_bytes += scan.skipped
                del link.rx[: scan.end]  # what follows the answer is stray, dropped before the next request
                return scan
            if link.broken is not None:
                raise DeviceUnavailable(link.broken)
            now = time.monotonic()
            until = deadline
            if scan.outcome in (Outcome.PARTIAL, Outcome.BAD_CRC):
                until = min(deadline, link.last_rx + silence)  # the slave stopped sending: decide now
            if now >= until:
                link.take_rx()  # the unusable answer is counted by its outcome, not as stray bytes
                return scan
            await link.wait_rx(until - now)

    def _classify(self, unit: int, outcome: Outcome, policy: SlavePolicy) -> Exception:
        where = f"unit {unit} on {self.name}"
        if outcome is Outcome.BAD_CRC:
            self.stats.count(unit, "crc_errors")
            return BadResponse(CRC_ERROR, f"CRC error in the answer of {where}")
        if outcome is Outcome.PARTIAL:
            self.stats.count(unit, "truncated")
            return BadResponse(TRUNCATED_FRAME, f"truncated answer from {where}")
        if outcome is Outcome.GARBAGE:
            self.stats.count(unit, "malformed")
            return BadResponse(MALFORMED_FRAME, f"no valid answer from {where}, only stray bytes")
        self.stats.count(unit, "timeouts")
        return DeviceUnavailable(f"no answer from {where} within {policy.response_timeout:g} s")


def arbiter_for(shared: Shared, key: str, settings: tuple[Any, ...], make: Callable[[], BusArbiter]) -> BusArbiter:
    """The arbiter of bus ``key`` among the gateway's ``shared`` resources (created by ``make`` on first use;
    dropped when no driver holds it).

    Raises ``ValueError`` when the bus is already in use with different line settings (two assets naming
    one port with different baud rates cannot both be right).
    """
    arbiter = shared.get(key, make)
    if arbiter.settings != settings:
        raise ValueError(
            f"{arbiter.name} is configured twice with different line settings: {arbiter.settings} and {settings}; "
            f"every asset on one port must use the same baudrate, parity, stopbits and bytesize"
        )
    return arbiter
