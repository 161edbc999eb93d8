"""The plant model the software PLCs serve: named signals evaluated from time, with user overrides.

A :class:`Plant` owns the signals of one plant file (:mod:`simulators.config`). Simulators *attach* to it;
while at least one is attached, one asyncio task evaluates every signal each ``update_interval`` and hands
the values to each attached listener. ``set(name, value)`` freezes an output at a value until
``release(name)``; the frozen value is what every listener sees.

Output names are the signal names, and ``<machine>.<output>`` for machines (see
:data:`simulators.config.MACHINE_OUTPUTS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import numpy as np

from simulators.config import PlantConfig, load_plant_config
from simulators.signals import SignalRuntime, Value, build_signal

log = logging.getLogger(__name__)

#: Called after every update with all current output values (overrides applied).
Listener = Callable[[Mapping[str, Value]], Awaitable[None]]


class Plant:
    """Signals of one plant file; see the module docstring.

    ``clock`` returns seconds (monotonic); plant time is ``clock() - clock() at construction``.
    """

    def __init__(self, config: PlantConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._t0 = clock()
        rng = np.random.default_rng(config.seed)
        self._signals: list[SignalRuntime] = [build_signal(n, c, rng) for n, c in config.signals.items()]
        self._names = frozenset(config.output_names())
        self._overrides: dict[str, Value] = {}
        self._values: dict[str, Value] = {}
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self.update()

    @classmethod
    def load(cls, path: str | Path | None = None) -> Plant:
        """A plant from a plant file (default: the bundled ``simulators/plant.yaml``)."""
        return cls(load_plant_config(path))

    @property
    def names(self) -> frozenset[str]:
        """Every output name (what points bind to and what ``set`` accepts)."""
        return self._names

    @property
    def values(self) -> Mapping[str, Value]:
        """Output values of the last update, overrides applied (read-only view)."""
        return self._values

    def value(self, name: str) -> Value:
        """Current value of one output."""
        self._check(name)
        return self._values[name]

    def update(self, t: float | None = None) -> Mapping[str, Value]:
        """Evaluate every signal at plant time ``t`` (default: now) and return the values."""
        if t is None:
            t = self._clock() - self._t0
        values: dict[str, Value] = {}
        for sig in self._signals:
            values.update(sig.evaluate(t))
        values.update(self._overrides)
        self._values = values
        return values

    def set(self, name: str, value: Value) -> None:
        """Freeze output ``name`` at ``value`` (seen by listeners from their next notification on)."""
        self._check(name)
        self._overrides[name] = value
        self._values = {**self._values, name: value}

    def release(self, name: str) -> None:
        """Let output ``name`` follow its signal again (no-op when it was not overridden)."""
        self._check(name)
        self._overrides.pop(name, None)

    def overridden(self, name: str) -> bool:
        return name in self._overrides

    def _check(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(f"unknown plant output {name!r}; known: {', '.join(sorted(self._names))}")

    # -- the update task -----------------------------------------------------------------------------------

    def attach(self, listener: Listener) -> None:
        """Register ``listener``; starts the update task with the first one. Needs a running event loop."""
        self._listeners.append(listener)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="plant-update")

    async def detach(self, listener: Listener) -> None:
        """Unregister ``listener``; the update task stops (and is awaited) when the last one leaves."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)
        if not self._listeners and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.update_interval
        deadline = loop.time()
        failing: set[int] = set()
        while True:
            values = self.update()
            for listener in list(self._listeners):
                try:
                    await listener(values)
                except Exception:  # a listener bug must not stop the plant for the other simulator
                    if id(listener) not in failing:
                        log.exception("plant listener %r failed (logged once)", listener)
                    failing.add(id(listener))
                else:
                    failing.discard(id(listener))
            deadline += interval
            delay = deadline - loop.time()
            if delay < 0:
                deadline, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
