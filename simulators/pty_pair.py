"""A pseudo-terminal pair standing in for a serial cable: the simulator owns the master end, the gateway
opens the slave path (``/dev/pts/N``) exactly as it would open ``/dev/ttyUSB0``."""

from __future__ import annotations

import os
import pty
import termios
import tty


class PtyPair:
    """``master_fd`` (non-blocking, raw) for the simulated device; ``path`` for the gateway's config.

    A symlink can give it a stable name (``link="/tmp/plc-rs485"``) so a config need not change per run.
    The slave end is kept open here too, so the device side never sees EOF while the gateway reconnects.
    """

    def __init__(self, link: str | None = None) -> None:
        self.master_fd, self._slave_fd = pty.openpty()
        tty.setraw(self.master_fd)
        tty.setraw(self._slave_fd)
        attrs = termios.tcgetattr(self._slave_fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self._slave_fd, termios.TCSANOW, attrs)
        os.set_blocking(self.master_fd, False)
        self.path = os.ttyname(self._slave_fd)
        self.link = link
        if link:
            if os.path.islink(link):
                os.unlink(link)
            os.symlink(self.path, link)

    def close(self) -> None:
        for fd in (self.master_fd, self._slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)

    def __enter__(self) -> "PtyPair":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
