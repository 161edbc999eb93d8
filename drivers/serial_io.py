"""Opening a serial port without blocking the event loop, and without leaking it when cancelled.

Opening a USB adapter can take the kernel a while, so the open runs in a worker thread. If the engine's
timeout cancels the caller meanwhile, the port is still opened by the thread: it is closed when the open
finishes, so its exclusive lock does not linger until garbage collection ("port in use" at the retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


#: how long a cancelled connect waits for its serial open to finish, so it can close the port again
OPEN_GRACE = 2.0


async def open_in_thread(open_port: Callable[[], T]) -> T:
    """``open_port()`` in a worker thread; a port opened after the caller was cancelled is closed."""
    opening = asyncio.get_running_loop().run_in_executor(None, open_port)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        # let the open finish (it takes milliseconds) and close the port before giving up: a port left open by
        # the worker thread would make the next connect fail with "port in use" until the thread is done
        try:
            async with asyncio.timeout(OPEN_GRACE):
                port = await asyncio.shield(opening)
        except BaseException:  # the open hangs, failed, or we are cancelled again: close it whenever it is done
            opening.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().close())  # type: ignore[attr-defined]
        else:
            port.close()  # type: ignore[attr-defined]
        raise
