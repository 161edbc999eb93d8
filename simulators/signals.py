"""Runtime of the plant's signals: each turns plant time (seconds since start) into values.

Time-based signals (sine, ramp, counter) are pure functions of time; random walks and machines keep state
and advance by the time elapsed since their last update. All randomness comes from one seeded generator.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from simulators.config import (
    ConstantSignal,
    CounterSignal,
    MachineSignal,
    RampSignal,
    RandomWalkSignal,
    SineSignal,
)

Value = bool | int | float | str
_STATE_CODES = {"idle": 0, "running": 1, "fault": 2}


class SignalRuntime(Protocol):
    """Produces ``{output name: value}`` for plant time ``t`` (seconds; never decreases between calls)."""

    def evaluate(self, t: float) -> dict[str, Value]: ...


class Sine:
    def __init__(self, name: str, cfg: SineSignal) -> None:
        self.name, self.cfg = name, cfg
        self._phase = math.radians(cfg.phase)

    def evaluate(self, t: float) -> dict[str, Value]:
        c = self.cfg
        s = math.sin(2.0 * math.pi * t / c.period + self._phase)
        return {self.name: c.min + (c.max - c.min) * (1.0 + s) / 2.0}


class Ramp:
    def __init__(self, name: str, cfg: RampSignal) -> None:
        self.name, self.cfg = name, cfg

    def evaluate(self, t: float) -> dict[str, Value]:
        c = self.cfg
        return {self.name: c.min + (c.max - c.min) * ((t % c.period) / c.period)}


class Counter:
    def __init__(self, name: str, cfg: CounterSignal) -> None:
        self.name, self.cfg = name, cfg

    def evaluate(self, t: float) -> dict[str, Value]:
        c = self.cfg
        steps = int(t // c.interval)
        if c.wrap is not None:
            steps %= c.wrap
        return {self.name: c.start + c.step * steps}


class RandomWalk:
    def __init__(self, name: str, cfg: RandomWalkSignal, rng: np.random.Generator) -> None:
        self.name, self.cfg, self.rng = name, cfg, rng
        self.value = cfg.start
        self._started = False

    def evaluate(self, t: float) -> dict[str, Value]:
        c = self.cfg
        if self._started:
            v = self.value + float(self.rng.uniform(-c.step, c.step))
            if v > c.max:
                v = 2 * c.max - v
            elif v < c.min:
                v = 2 * c.min - v
            self.value = min(max(v, c.min), c.max)
        self._started = True
        return {self.name: self.value}


class Constant:
    def __init__(self, name: str, cfg: ConstantSignal) -> None:
        self.name, self.value = name, cfg.value

    def evaluate(self, t: float) -> dict[str, Value]:
        return {self.name: self.value}


class Machine:
    """idle -> running -> fault (with probability) or idle -> ...; one part every cycle_time while running."""

    def __init__(self, name: str, cfg: MachineSignal, rng: np.random.Generator) -> None:
        self.name, self.cfg, self.rng = name, cfg, rng
        self.state: str = cfg.initial_state
        self.parts: int = cfg.initial_parts
        self._state_end: float = self._duration(self.state)
        self._next_part: float = cfg.cycle_time

    def _duration(self, state: str) -> float:
        c = self.cfg
        return {"idle": c.idle_time, "running": c.run_time, "fault": c.fault_time}[state]

    def _advance(self, t: float) -> None:
        c = self.cfg
        while True:
            if self.state == "running":
                horizon = min(t, self._state_end)
                if self._next_part <= horizon:
                    made = int((horizon - self._next_part) // c.cycle_time) + 1
                    self.parts += made
                    self._next_part += made * c.cycle_time
            if t < self._state_end:
                return
            start = self._state_end
            if self.state == "running":
                faulted = c.fault_probability > 0 and float(self.rng.random()) < c.fault_probability
                self.state = "fault" if faulted else "idle"
            elif self.state == "idle":
                self.state = "running"
                self._next_part = start + c.cycle_time
            else:
                self.state = "idle"
            self._state_end = start + self._duration(self.state)

    def evaluate(self, t: float) -> dict[str, Value]:
        self._advance(t)
        n, s = self.name, self.state
        return {
            f"{n}.state": s,
            f"{n}.state_code": _STATE_CODES[s],
            f"{n}.running": s == "running",
            f"{n}.idle": s == "idle",
            f"{n}.fault": s == "fault",
            f"{n}.parts": self.parts,
        }


def build_signal(name: str, cfg: Any, rng: np.random.Generator) -> SignalRuntime:
    """The runtime of one configured signal."""
    if isinstance(cfg, SineSignal):
        return Sine(name, cfg)
    if isinstance(cfg, RampSignal):
        return Ramp(name, cfg)
    if isinstance(cfg, CounterSignal):
        return Counter(name, cfg)
    if isinstance(cfg, RandomWalkSignal):
        return RandomWalk(name, cfg, rng)
    if isinstance(cfg, ConstantSignal):
        return Constant(name, cfg)
    if isinstance(cfg, MachineSignal):
        return Machine(name, cfg, rng)
    raise TypeError(f"unknown signal config {type(cfg).__name__}")
