"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) without a dependency.

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with a watchdog,
``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``). The daemon sends ``READY=1`` once every uplink has had its first
connect attempt, then ``WATCHDOG=1`` from a task on the event loop at half the watchdog period — a blocked
loop stops the pings and systemd restarts the service — and ``STOPPING=1`` when it shuts down. Outside
systemd (no ``$NOTIFY_SOCKET``) nothing is sent. Sending never blocks and never raises.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger("gateway")


class Notifier:
    """One datagram socket to systemd's ``$NOTIFY_SOCKET``; :meth:`send` is a no-op when there is none."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> bool:
        """Send one notification (``READY=1``, ``WATCHDOG=1``, ...); False if it could not be sent."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:  # systemd gone or its queue full: log once, keep running
            if not self._failed:
                log.warning("systemd notify socket %s: %s", self.address.replace("\0", "@"), exc)
            self._failed = True
            return False
        if self._failed:
            log.info("systemd notify socket %s works again", self.address.replace("\0", "@"))
            self._failed = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def supervise(self, settled: Iterable[Callable[[], bool]], poll: float = 0.05) -> None:
        """Send ``READY=1`` once every ``settled()`` is true (each uplink's first connect attempt has had an
        outcome, connected or not), then ``WATCHDOG=1`` every half watchdog period until cancelled."""
        checks = list(settled)
        while not all(check() for check in checks):
            await asyncio.sleep(poll)
        self.send("READY=1")
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None without a watchdog (or one meant for another pid)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


__all__ = ["Notifier"]
