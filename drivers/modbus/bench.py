"""The Modbus side of ``iiot-gateway bench``'s hot path, found through the entry point group
``iiot_gateway.bench`` (``modbus_tcp = "drivers.modbus.bench:HotPath"``), so that ``gateway.bench`` imports no
driver.

One device of ``n_tags`` holding-register tags of 8 type/byte-order mixes, compiled by the driver's planner into
requests of up to 125 registers. :meth:`HotPath.polls` gives the answers of a poll as the driver receives them
(a big-endian ``uint16`` view of each response frame, see :mod:`drivers.modbus.base`) or, for the naive
pipeline, as pymodbus hands them to a plain program (lists of ints); :meth:`HotPath.decode` is the driver's own
decoding of a poll, :meth:`HotPath.naive_read` the same a sample at a time with ``struct``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from drivers.modbus.config import REGISTERS, ModbusTag, ModbusTcpSource
from drivers.modbus.plan import ReadPlan
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.batch import Batch
from gateway.driver import DriverContext

_TYPES: list[tuple[Any, Any]] = [("float32", "ABCD"), ("float32", "CDAB"), ("int16", "ABCD"), ("uint16", "BADC"),
          ("int32", "CDAB"), ("uint32", "DCBA"), ("float64", "ABCD"), ("int16", "ABCD")]  # fmt: skip
_FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}


def make_tags(n: int, **reduce: Any) -> list[ModbusTag]:
    """``n`` tags of the 8 mixes at consecutive addresses (every other int16 scaled by 0.1), with ``reduce``."""
    tags, addr = [], 0
    for i in range(n):
        typ, order = _TYPES[i % len(_TYPES)]
        scale = 0.1 if typ == "int16" and i % 2 else 1.0
        tags.append(ModbusTag(name=f"t{i}", address=f"hr:{addr}", type=typ, byte_order=order, scale=scale, **reduce))
        addr += REGISTERS[typ]
    return tags


def register_image(tags: list[ModbusTag], step: int) -> np.ndarray:
    """A register image whose values move a little every poll (float noise, integer counters)."""
    words = sum(REGISTERS[t.type] for t in tags)
    img = np.empty(words, dtype=np.uint16)
    pos = 0
    rng = np.random.default_rng(step)
    for i, t in enumerate(tags):
        n = REGISTERS[t.type]
        x = 100 + 10 * np.sin(step / 20 + i) + rng.normal(0, 0.05)
        v = x if t.type.startswith("float") else int(x) % 30000
        raw = struct.pack(">" + _FMT[t.type], v)
        w = list(struct.unpack(f">{n}H", raw))
        if t.byte_order in ("CDAB", "DCBA"):
            w = w[::-1]
        if t.byte_order in ("BADC", "DCBA"):
            w = [((x & 0xFF) << 8) | (x >> 8) for x in w]
        img[pos : pos + n] = w
        pos += n
    return img


class _Response:
    """What the driver gets for one read: the registers of the answer."""

    __slots__ = ("registers",)

    def __init__(self, registers: Any) -> None:
        self.registers = registers

    def isError(self) -> bool:  # pymodbus's name
        return False


def responses(plan: ReadPlan, image: np.ndarray, as_list: bool = False) -> list[_Response]:
    """One poll's answers: as the driver receives them (a big-endian uint16 view of each response frame), or
    as pymodbus hands them to a plain program (lists of ints)."""
    if as_list:
        return [_Response(image[r.start : r.start + r.count].tolist()) for r in plan.requests]
    return [_Response(np.frombuffer(b"\x00" + image[r.start : r.start + r.count].astype(">u2").tobytes(), ">u2",
                                    offset=1)) for r in plan.requests]  # fmt: skip


class HotPath:
    """The hot-path workload of ``n_tags`` Modbus tags (see the module docstring); ``reduce``: reduction
    fields of every tag (``aggregate=[...]``)."""

    name = "modbus_tcp"

    def __init__(self, n_tags: int, **reduce: Any) -> None:
        self.tags = make_tags(n_tags, **reduce)
        # the driver itself, never connected: its plan, its publish precision, its decoding
        source = ModbusTcpSource(driver="modbus_tcp", host="127.0.0.1", max_registers_per_read=125, max_gap=0)
        context = DriverContext.detached("bench", n_tags)
        self._driver = ModbusTcpDriver(source, self.tags, context)
        self.plan = self._driver.plan
        #: publish precision as the driver declares it (float32 registers at float32 precision)
        self.float32 = context.meta.float32
        self._words = np.zeros(self.plan.register_words, dtype=np.uint16)  # the poll buffer, as the driver's
        self.description = (
            f"{n_tags} Modbus tags ({len(_TYPES)} type/byte-order mixes) read in "
            f"{len(self.plan.requests)} requests of up to 125 registers"
        )

    def polls(self, count: int, *, naive: bool = False) -> list[list[_Response]]:
        """The answers of ``count`` successive polls (values moving between them)."""
        return [responses(self.plan, register_image(self.tags, s), as_list=naive) for s in range(count)]

    def decode(self, answers: list[_Response], batch: Batch) -> None:
        """The driver's decoding of one poll's answers into ``batch`` (a full batch of every tag)."""
        self._driver.decode_answers(self.plan, answers, batch, self._words)

    def naive_layout(self) -> list[tuple[Any, ...]]:
        """Per tag: name, first word in the poll's registers, words, ``struct`` formats, byte order, scale, offset."""
        layout: list[tuple[Any, ...]] = []
        pos = 0
        for t in self.tags:
            n = REGISTERS[t.type]
            layout.append((t.name, pos, n, ">" + _FMT[t.type], f">{n}H", t.byte_order, t.scale, t.offset))
            pos += n
        return layout

    @staticmethod
    def naive_read(layout: list[Any], answers: list[_Response], now: int, history: dict[str, list[Any]]) -> None:
        """One poll decoded a sample at a time: ``struct`` per tag, one dict per sample appended to ``history``."""
        regs = [x for r in answers for x in r.registers]
        for name, at, n, fmt, words_fmt, order, scale, offset in layout:
            words = regs[at : at + n]
            if order in ("CDAB", "DCBA"):
                words = words[::-1]
            if order in ("BADC", "DCBA"):
                words = [((x & 0xFF) << 8) | (x >> 8) for x in words]
            value = struct.unpack(fmt, struct.pack(words_fmt, *words))[0] * scale + offset
            history[name].append({"ts": now, "value": value, "quality": "good"})
