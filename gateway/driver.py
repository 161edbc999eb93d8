"""The driver contract and the driver registry.

A driver speaks one protocol to one device (one configured ``source``). The engine creates it,
then calls, always from the one asyncio task that owns the source (never concurrently):

- ``await connect()`` — open the connection; raise :class:`DeviceUnavailable` if the device cannot be
  reached. The engine retries with capped exponential backoff.
- ``await read() -> Batch`` — one poll of every tag in the plan. Raise :class:`DeviceUnavailable` when
  the connection is lost (the engine closes, marks the asset disconnected and reconnects); mark single
  tags bad in the batch when only they failed (e.g. a Modbus exception on one read request).
- ``await write(tag, value) -> Any`` — write one tag (only tags with ``writable: true`` reach it), read it
  back and return the value read back. Raise ``ValueError``/``TypeError`` for a value the tag cannot hold,
  :class:`gateway.scaling.TagNotWritable` for a tag the protocol cannot write, :class:`WriteError` when the
  device refuses or reads back something else, :class:`DeviceUnavailable` when the link is gone. The engine
  calls it between polls, from the same task, so it never overlaps a read.
- ``await close()`` — release the connection; must not raise.
- optional ``subscribe()`` — an async iterator of Batches, used instead of ``read()`` when the driver
  instance has ``streaming = True`` (e.g. OPC UA ``mode: subscribe``, a serial instrument that streams).
  After each (re)connect it should first yield one full read, so nothing is missed silently; it raises
  :class:`DeviceUnavailable` when the link is lost. Batches may hold a subset of tags (``Batch.index``),
  each tag at most once per batch (split a burst of changes of one tag into several batches).

Optional attributes the engine reads or sets: ``streaming`` (see ``subscribe``), ``float32_tags`` (a bool
array: publish those tags at float32 precision), ``counters`` (an object with ``as_dict()``, shown on the
status API), and ``state_dir`` — when the driver has this attribute, the engine sets it to
``gateway.state_dir`` (a ``Path``) after construction, for files the driver keeps (certificates).

Timeouts wrap every call from outside (``source.timeout``); drivers do not sleep, retry or log and swallow
errors on their own.

Each driver class declares ``name`` (the ``driver:`` key in YAML), ``SourceConfig`` (pydantic model of
its ``source:`` block; a ``driver: Literal[name]`` field is required) and ``TagConfig`` (pydantic model of
one tag, subclassing :class:`gateway.config.common.TagBase`). A driver may also define a classmethod
``check_config(source, tags)`` that raises ``ValueError`` for a config its models accept one by one but it
cannot serve as a whole (e.g. a tag larger than the read limit); it runs during config validation, so the
error comes with the asset's file and line. Drivers are found through the entry-point group
``iiot_gateway.drivers``; the gateway never imports a particular driver.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from gateway.batch import Batch

ENTRY_POINT_GROUP = "iiot_gateway.drivers"


class DeviceUnavailable(Exception):
    """The device cannot be reached or the connection broke; the engine reconnects with backoff."""


class WriteError(Exception):
    """A write was refused or failed (message says why)."""


@runtime_checkable
class Driver(Protocol):
    name: ClassVar[str]
    SourceConfig: ClassVar[type[BaseModel]]
    TagConfig: ClassVar[type[BaseModel]]

    def __init__(self, source: Any, tags: list[Any]) -> None: ...

    async def connect(self) -> None: ...

    async def read(self) -> Batch: ...

    async def write(self, tag: str, value: Any) -> Any: ...

    async def close(self) -> None: ...


@functools.cache
def registry() -> dict[str, type[Driver]]:
    """Driver name -> driver class, from the ``iiot_gateway.drivers`` entry points (loaded once).

    A plug-in that fails to import is logged and left out: it must not take the other drivers down.
    """
    found: dict[str, type[Driver]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:
            logging.getLogger("gateway.driver").warning(
                "driver %r cannot be loaded: %s: %s", ep.name, type(exc).__name__, exc
            )
    return dict(sorted(found.items()))

