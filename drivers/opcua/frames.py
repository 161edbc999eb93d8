"""Undecodable messages from an OPC UA server: counted per driver, never logged as tracebacks.

asyncua's socket protocol catches whatever fails while it parses what the server sent, logs it with
``logger.exception`` (a traceback of about 20 lines per message) and drops the connection. The driver
swaps the protocol's logger for :class:`_CountingLogger` once the session is open: the message is counted
in ``driver_counters.bad_frames`` instead, and the engine logs the lost connection once. During the
handshake (no driver protocol to hook yet) :class:`_OneLine` turns the record into one line without the
traceback.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

#: asyncua 2.x: the record its socket protocol logs for a message it could not parse
PARSE_FAILED = "Exception raised while parsing message from server"
_PROTOCOL_LOGGER = "asyncua.client.ua_client.UASocketProtocol"


@dataclass(slots=True)
class OpcUaCounters:
    """What the status API shows as ``driver_counters`` (monotonic since the driver was created)."""

    bad_frames: int = 0  # messages from the server asyncua could not parse (each drops the connection)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _CountingLogger:
    """Stands in for one protocol's logger: :data:`PARSE_FAILED` is counted (and logged at DEBUG only),
    everything else goes to the real logger."""

    def __init__(self, logger: Any, counters: OpcUaCounters) -> None:
        self._logger, self._counters = logger, counters

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if msg == PARSE_FAILED:
            self._counters.bad_frames += 1
            # asyncua calls this inside its except block: exc_info is the parse failure
            self._logger.debug("%s (counted in bad_frames)", msg, exc_info=True)  # noqa: LOG014
            return
        self._logger.exception(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def count_bad_frames(client: Any, counters: OpcUaCounters) -> None:
    """Count the parse failures of ``client``'s current connection in ``counters`` (call after connect)."""
    protocol = getattr(getattr(client, "uaclient", None), "protocol", None)
    logger = getattr(protocol, "logger", None)
    if protocol is not None and logger is not None and not isinstance(logger, _CountingLogger):
        protocol.logger = _CountingLogger(logger, counters)


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == PARSE_FAILED and record.exc_info:
            exc = record.exc_info[1]
            record.msg = "undecodable message from an OPC UA server (%s: %s); asyncua drops the connection"
            record.args = (type(exc).__name__, str(exc)[:200])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger(_PROTOCOL_LOGGER).addFilter(_OneLine())
