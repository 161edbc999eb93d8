"""Log lines that outsiders cannot forge or flood.

:func:`safe` escapes a value that came from outside the gateway (an asset or tag name from a URL or an MQTT
command, a request id, a ``by``, a topic, payload text) before it goes into a log line: control characters
and line separators become visible escapes, so a newline in a tag name cannot start a fake log line.

:class:`ChangeLog` rate-limits the state changes of one asset (tags bad / good again, disconnected /
connected again): the first change of each kind is logged at once, every further change within the
summary interval is only counted, and one summary line with the counts and the current state follows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

#: longest escaped value put into a log line (longer ones are cut, with "..." at the end)
MAX_LOGGED = 200

# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: every character a terminal, a log
# viewer or journald could take as the end of a line or a control sequence
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def safe(value: Any, limit: int = MAX_LOGGED) -> str:
    """``value`` as text fit for one log line: control characters escaped (``\\n``, ``\\x1b``, ...), at most
    ``limit`` characters. Backslashes stay as they are (a ``repr()`` inside the text is not escaped twice).

    Use it for every value from outside the gateway that is logged without ``repr()``; ``repr()`` escapes
    too but adds quotes.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit * 4:  # never escape megabytes only to cut them
        text = text[: limit * 4]
    text = text.translate(_ESCAPES)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ChangeLog:
    """Rate-limited log of one asset's state changes (see the module docstring).

    :meth:`change` logs the first change of each ``kind`` at once; further changes within ``interval``
    seconds are counted, and :meth:`tick` (called on every poll and reconnect attempt, cheap) logs one
    summary with the counts and the newest state when the interval has passed. While the device keeps
    flapping, that is one line per interval; after a quiet interval the next change is logged at once again.
    """

    def __init__(
        self, logger: logging.Logger, name: str, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger, self.name, self.interval, self._clock = logger, name, interval, clock
        self._window = float("-inf")  # when the current interval began
        self._logged: set[str] = set()  # kinds logged in full in the current interval
        self._unlogged: Counter[str] = Counter()  # changes only counted in the current interval
        self._newest: tuple[int, str] | None = None  # level and text of the newest change
        #: changes only counted since the start (for tests and status views)
        self.suppressed = 0

    def change(self, kind: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Report one change (``msg % args``, logged after ``"{name}: "``); True when it was logged in full,
        False when it was only counted for the next summary."""
        now = self._clock()
        self.tick(now)
        if now - self._window >= self.interval:  # a quiet interval ended: start afresh
            self._window, self._logged = now, set()
        self._newest = (level, msg % args if args else msg)
        if kind not in self._logged:
            self._logged.add(kind)
            self.logger.log(level, "%s: " + msg, self.name, *args, exc_info=exc_info, stacklevel=2)
            return True
        self._unlogged[kind] += 1
        self.suppressed += 1
        return False

    def tick(self, now: float | None = None) -> None:
        """Log the summary of the counted changes once the interval has passed."""
        if not self._unlogged:
            return
        now = self._clock() if now is None else now
        if now - self._window < self.interval:
            return
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(self._unlogged.items()))
        total = sum(self._unlogged.values())
        level, newest = self._newest or (logging.INFO, "")
        self.logger.log(
            level, "%s: %d more state change(s) in the last %.0f s not logged one by one (%s); now: %s",
            self.name, total, now - self._window, counts, newest,
        )  # fmt: skip
        self._unlogged.clear()
        self._window = now  # kinds stay "logged": a device that keeps flapping gets one summary per interval
