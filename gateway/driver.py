"""The driver contract: what a southbound driver is, what it gets, and how the gateway finds it.

A driver package exposes one :class:`DriverSpec` through the entry-point group ``iiot_gateway.drivers``
(``name = "package.module:SPEC"``). The spec names the driver (the ``driver:`` key in YAML), its pydantic
models (``SourceConfig`` for the ``source:`` block, with a ``driver: Literal[name]`` field; ``TagConfig`` for
one tag, a subclass of :class:`gateway.config.common.TagBase`), an optional whole-config ``check`` that
``validate`` runs too, and ``create(source, tags, context) -> Driver``.

A :class:`Driver` speaks one protocol to one device (one configured source). The gateway calls it from the
one task that owns the source, never two calls at once:

- ``await connect()`` — open the connection; raise :class:`DeviceUnavailable` if the device cannot be
  reached. The gateway retries with jittered, capped exponential backoff.
- ``await read() -> Batch`` — one poll of every tag. Raise :class:`DeviceUnavailable` when the connection is
  lost; mark single tags bad in the batch when only they failed.
- ``await write(tag, value) -> Any`` — write one tag (only ``writable: true`` tags reach it), read it back and
  return the value read back. Raise ``ValueError``/``TypeError`` for a value the tag cannot hold,
  :class:`gateway.scaling.TagNotWritable` for a tag the protocol cannot write, :class:`WriteError` when the
  device refuses or reads back something else, :class:`DeviceUnavailable` when the link is gone.
- ``await close()`` — release the connection; must not raise.
- ``counters() -> Mapping[str, int]`` — the driver's own counters, shown on the status API.

A :class:`StreamingDriver` also has ``subscribe()``, an async iterator of Batches the gateway uses instead of
``read()`` (e.g. OPC UA ``mode: subscribe``, a serial instrument that streams). The gateway streams from a
driver that is an instance of :class:`StreamingDriver` (subclass it); a driver whose config chooses between
polling and streaming returns one class or the other from ``create``. After each connect it first
yields one full read; it raises :class:`DeviceUnavailable` when the link is lost. Batches may hold a subset of
tags (``Batch.index``), each tag at most once per batch. Writes never run while the stream is inside the
driver unless the class sets ``writes_during_stream = True`` (its protocol multiplexes requests, as OPC UA
does): otherwise the gateway serves queued writes between two batches.

:class:`DriverContext` is everything a driver gets from the gateway besides its config: the asset id, the
directory for files it keeps (certificates), the per-tag publish metadata (:class:`TagMeta`, which it may
refine, e.g. from the types of the values read), and :class:`Shared` for resources several sources share (the
arbiter of one RS-485 port). Drivers keep no module-level registries.

Timeouts wrap every call from outside (``source.timeout``); drivers do not sleep, retry or log and swallow
errors on their own. Drivers import only the contract modules of the gateway: this module,
``gateway.batch``, ``gateway.config.common`` and ``gateway.scaling``.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel

from gateway.batch import Batch

ENTRY_POINT_GROUP = "iiot_gateway.drivers"

T = TypeVar("T")


class DeviceUnavailable(Exception):
    """The device cannot be reached or the connection broke; the engine reconnects with backoff."""


class WriteError(Exception):
    """A write was refused or failed (message says why)."""


@dataclass
class TagMeta:
    """Per-tag publish metadata of one source, one bool per tag in config order, shared by reference between
    the driver and every uplink's reducer: ``float32`` — publish at float32 precision (the value is a 32-bit
    float on the device: ``123.4``, not ``123.40000152587891``); ``integer`` — publish as a JSON integer.

    Before ``create`` the gateway sets ``integer`` for the tags the common config makes integers and leaves
    ``float32`` all False. The driver updates both in place, never replaces the arrays: from its config
    (Modbus ``type: float32``) in ``create``, or from the types of the values it reads (OPC UA), at any time."""

    float32: np.ndarray
    integer: np.ndarray

    @classmethod
    def empty(cls, n_tags: int) -> "TagMeta":
        return cls(np.zeros(n_tags, dtype=bool), np.zeros(n_tags, dtype=bool))


class Shared:
    """Resources several sources of one gateway share, by key (e.g. ``"serial:/dev/ttyUSB0"`` -> the bus
    arbiter of that port). Owned by the gateway; a driver gets it through its context.

    A resource lives as long as some driver holds a reference to it (the drivers keep it, this holds it
    weakly): after a hot reload removed or changed every asset on a port, the next driver on it gets a fresh
    one, with the new line settings. Resources are therefore objects that take weak references (instances of
    ordinary classes, not ints or tuples)."""

    def __init__(self) -> None:
        self._items: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

    def get(self, key: str, make: Callable[[], T]) -> T:
        """The resource ``key``, created by ``make()`` when no driver holds one."""
        item: T | None = self._items.get(key)
        if item is None:
            item = make()
            self._items[key] = item
        return item


@dataclass(frozen=True)
class DriverContext:
    """What the gateway gives a driver besides its config (see the module docstring)."""

    asset: str
    state_dir: Path
    meta: TagMeta
    shared: Shared = field(default_factory=Shared)

    @classmethod
    def detached(
        cls, asset: str, n_tags: int, *, state_dir: Path | str = "state", shared: Shared | None = None
    ) -> "DriverContext":
        """A context for a driver used outside a running gateway (a command-line tool such as ``probe``, a
        test): all-False metadata, the given state directory, ``shared`` or a new :class:`Shared` of its own."""
        return cls(asset, Path(state_dir), TagMeta.empty(n_tags), Shared() if shared is None else shared)


@runtime_checkable
class Driver(Protocol):
    """One connection to one device (see the module docstring for the rules of each call)."""

    async def connect(self) -> None: ...

    async def read(self) -> Batch: ...

    async def write(self, tag: str, value: Any) -> Any: ...

    async def close(self) -> None: ...

    def counters(self) -> Mapping[str, int]:
        """The driver's own counters for the status API (none by default)."""
        return {}


@runtime_checkable
class StreamingDriver(Driver, Protocol):
    """A driver that pushes batches: the gateway iterates :meth:`subscribe` instead of calling ``read()``."""

    #: True when ``write()`` may run while ``subscribe()`` waits inside the driver (the protocol multiplexes
    #: requests on one connection); False: writes are served between two batches
    writes_during_stream: ClassVar[bool] = False

    def subscribe(self) -> AsyncIterator[Batch]: ...


def _no_check(source: Any, tags: list[Any]) -> None:
    return None


@dataclass(frozen=True)
class DriverSpec:
    """A driver as the gateway finds it (the object an ``iiot_gateway.drivers`` entry point names).

    ``check(source, tags)`` raises ``ValueError`` for a config the models accept one by one but the driver
    cannot serve as a whole (e.g. a tag larger than the read limit); ``validate`` and ``run`` both run it, so
    the error comes with the asset's file and line. ``create`` may import heavy libraries lazily (a gateway
    without an OPC UA source never imports asyncua).
    """

    name: str
    SourceConfig: type[BaseModel]
    TagConfig: type[BaseModel]
    create: Callable[[Any, list[Any], DriverContext], Driver]
    check: Callable[[Any, list[Any]], None] = _no_check


@functools.cache
def registry() -> dict[str, DriverSpec]:
    """Driver name -> driver spec, from the ``iiot_gateway.drivers`` entry points (loaded once).

    A plug-in that fails to import, or names something other than a :class:`DriverSpec` whose ``name`` is
    the entry point's, is logged and left out: it must not take the other drivers down.
    """
    log = logging.getLogger("gateway.driver")
    found: dict[str, DriverSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as exc:
            log.warning("driver %r cannot be loaded: %s: %s", ep.name, type(exc).__name__, exc)
            continue
        if not isinstance(spec, DriverSpec):
            log.warning(
                "driver %r is left out: its entry point %s names a %s, not a gateway.driver.DriverSpec",
                ep.name,
                ep.value,
                type(spec).__name__,
            )
        elif spec.name != ep.name:
            log.warning(
                "driver %r is left out: its entry point %s names the spec of driver %r", ep.name, ep.value, spec.name
            )
        else:
            found[ep.name] = spec
    return dict(sorted(found.items()))
