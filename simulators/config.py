"""The plant file of the software PLCs: signals, the Modbus point map and the OPC UA node map.

Layout of a plant file (see ``simulators/plant.yaml`` for the bundled, documented example)::

    seed: 7                    # random walk / fault draws are reproducible with a seed
    update_interval: 100ms     # how often signals are evaluated and pushed to the servers
    signals:                   # name -> {kind: sine|ramp|counter|random_walk|constant|machine, ...}
      pressure: {kind: sine, min: 100, max: 180, period: 20s}
      press: {kind: machine, idle_time: 3s, run_time: 30s, cycle_time: 2s, fault_probability: 0.2}
    modbus:
      unit: 1
      tables: {hr: 300, ir: 200, co: 208, di: 208}     # sizes; reads outside answer "illegal address"
      points:
        - {name: pressure, address: 40001, type: float32, byte_order: CDAB, signal: pressure}
        - {name: strokes, address: 40003, type: uint32, signal: press.parts}
    opcua:
      namespace: urn:acme:oven
      nodes:
        - {name: zone1_temp, id: Oven1.Zone1.Temperature, type: Double, signal: zone1}

A point or node takes its value from ``signal`` (a signal name; for a machine ``<name>.<output>``) or is a
constant ``value``. Errors name the file, the line and the field path, all at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from simulators.addressing import Address, parse_address
from simulators.codec import ALLOWED_ORDERS, BIT_TYPES, BYTE_ORDERS, REGISTER_TYPES, register_count

DEFAULT_PLANT = Path(__file__).with_name("plant.yaml")

#: Outputs of a ``machine`` signal, addressed as ``<name>.<output>``.
MACHINE_OUTPUTS = ("state", "state_code", "running", "idle", "fault", "parts")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class PlantConfigError(ValueError):
    """The plant file cannot be read or is invalid; the message lists every problem as ``file:line: path: msg``."""


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration; use e.g. 100ms, 2s, 5m")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0, description="100ms, 2s, 5m or seconds")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$", max_length=64)]
Scalar = Union[bool, int, float, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Bounded(_Strict):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> _Bounded:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class SineSignal(_Bounded):
    """``min + (max - min) * (1 + sin(2 pi t / period + phase)) / 2``; ``phase`` in degrees."""

    kind: Literal["sine"]
    period: Duration
    phase: float = 0.0


class RampSignal(_Bounded):
    """Rises linearly from ``min`` to ``max`` over ``period``, then starts again at ``min``."""

    kind: Literal["ramp"]
    period: Duration


class CounterSignal(_Strict):
    """``start + step * floor(t / interval)``; with ``wrap`` the count restarts at ``start`` after ``wrap - 1``."""

    kind: Literal["counter"]
    start: int = 0
    step: int = 1
    interval: Duration = 1.0
    wrap: int | None = Field(None, gt=0, description="Number of distinct values before the count restarts")


class RandomWalkSignal(_Bounded):
    """Starts at ``start``; each update moves by a uniform draw in ``[-step, +step]``, kept in ``[min, max]``."""

    kind: Literal["random_walk"]
    start: float
    step: float = Field(gt=0)

    @model_validator(mode="after")
    def _start_inside(self) -> RandomWalkSignal:
        if not self.min <= self.start <= self.max:
            raise ValueError(f"start ({self.start}) must be within min..max ({self.min}..{self.max})")
        return self


class ConstantSignal(_Strict):
    """A fixed value (number, boolean or text) until overridden."""

    kind: Literal["constant"]
    value: Scalar


class MachineSignal(_Strict):
    """A machine cycle: idle -> running -> (fault with ``fault_probability`` ->) idle -> ...

    While running it makes one part every ``cycle_time``. Outputs: ``state`` (idle/running/fault),
    ``state_code`` (0/1/2), ``running``, ``idle``, ``fault`` (booleans) and ``parts`` (count since start).
    """

    kind: Literal["machine"]
    idle_time: Duration = 5.0
    run_time: Duration = 30.0
    cycle_time: Duration = 2.0
    fault_time: Duration = 10.0
    fault_probability: float = Field(0.1, ge=0, le=1, description="Chance that a run ends in a fault")
    initial_state: Literal["idle", "running", "fault"] = "running"
    initial_parts: int = Field(0, ge=0)


Signal = Annotated[
    Union[SineSignal, RampSignal, CounterSignal, RandomWalkSignal, ConstantSignal, MachineSignal],
    Field(discriminator="kind"),
]


class _Bound(_Strict):
    """A point/node: its value comes from ``signal`` or is the constant ``value`` (default 0 / false / "")."""

    name: Name
    signal: str | None = None
    value: Scalar | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _Bound:
        if self.signal is not None and self.value is not None:
            raise ValueError("give either signal or value, not both")
        return self


class ModbusPoint(_Bound):
    """One value in the Modbus tables; see :mod:`simulators.codec` for the encodings."""

    address: Annotated[Address, BeforeValidator(lambda v: v if isinstance(v, Address) else parse_address(v))]
    type: Literal[
        "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "bit", "string"
    ]
    byte_order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    length: int | None = Field(None, ge=1, le=125, description="string only: registers (2 characters each)")
    scale: float = Field(1.0, description="register = round((value - offset) / scale)")
    offset: float = 0.0

    @property
    def registers(self) -> int:
        """Registers occupied (0 for a coil / discrete input)."""
        return register_count(self.type, self.length)

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        table, bit = self.address.table, self.address.bit
        if self.type in BIT_TYPES and table not in ("co", "di"):
            raise ValueError("type bool needs a coil or discrete input; for a bit of a register use type bit (40010.3)")
        if self.type in REGISTER_TYPES and table in ("co", "di"):
            raise ValueError(f"a {self.address} is a single bit; use type bool")
        if (self.type == "bit") != (bit is not None):
            raise ValueError("type bit needs an address with a bit number (e.g. 40010.3), and only type bit has one")
        if self.type == "string" and self.length is None:
            raise ValueError("type string needs length (registers, 2 characters each)")
        if self.type != "string" and self.length is not None:
            raise ValueError("length is only for type string")
        if self.byte_order not in ALLOWED_ORDERS.get(self.type, BYTE_ORDERS):
            raise ValueError(
                f"byte order {self.byte_order} is not meaningful for {self.type}; use one of "
                f"{', '.join(ALLOWED_ORDERS[self.type])}"
            )
        if self.scale == 0:
            raise ValueError("scale cannot be 0")
        if self.address.offset + max(self.registers, 1) > 65536:
            raise ValueError(f"{self.type} at {self.address} runs past the end of the table (65536)")
        return self


#: Kinds of answers that do not match their request, served by ``modbus.answer_fault`` (see modbus_sim.py).
ANSWER_FAULTS = (
    "other_function",
    "transaction_id_zero",
    "wrong_unit",
    "extra_register",
    "odd_byte_count",
    "bits_byte_count_high",
    "bits_byte_count_low",
)


class ModbusSection(_Strict):
    unit: int = Field(1, ge=0, le=255, description="Unit id (slave id) the PLC answers")
    answer_fault: Literal[ANSWER_FAULTS] | None = Field(  # type: ignore[valid-type]
        None,
        description=(
            "Test knob: answer reads with a frame that does not match the request: other_function (the "
            "other table's values under its function code: FC4 for FC3, FC2 for FC1 and back), "
            "transaction_id_zero (with marker values), wrong_unit, extra_register (a marker word first), "
            "odd_byte_count, bits_byte_count_high (a marker byte first), bits_byte_count_low"
        ),
    )
    answer_fault_rate: float = Field(1.0, ge=0, le=1, description="Fraction of read answers answer_fault changes")
    tables: dict[Literal["hr", "ir", "co", "di"], int] = Field(
        default_factory=dict,
        description="Size of each table (registers or bits); default: just past the last mapped address",
    )
    points: list[ModbusPoint] = Field(default_factory=list)

    def table_size(self, table: str) -> int:
        """Size of ``table``: as configured, else just past the last point (coils/DIs rounded up to 16)."""
        size = self.tables.get(table)  # type: ignore[call-overload]
        if size is None:
            size = max(
                (p.address.offset + max(p.registers, 1) for p in self.points if p.address.table == table), default=1
            )
        return -(-size // 16) * 16 if table in ("co", "di") else size

    @model_validator(mode="after")
    def _no_overlap(self) -> ModbusSection:
        errors: list[str] = []
        names: set[str] = set()
        owner: dict[tuple[str, int], str] = {}
        bits_used: dict[tuple[str, int, int], str] = {}
        for p in self.points:
            if p.name in names:
                errors.append(f"duplicate point name {p.name!r}")
            names.add(p.name)
            size = self.tables.get(p.address.table)  # type: ignore[call-overload]
            if size is not None and p.address.offset + max(p.registers, 1) > size:
                errors.append(f"{p.name}: {p.address} lies outside the {p.address.table} table (size {size})")
            if p.type == "bit":
                key = (p.address.table, p.address.offset, p.address.bit or 0)
                if key in bits_used:
                    errors.append(f"{p.name}: bit {p.address} is already used by {bits_used[key]}")
                bits_used[key] = p.name
                other = owner.get((p.address.table, p.address.offset))
                if other is not None and not other.startswith("bit:"):
                    errors.append(f"{p.name}: register {p.address.table}:{p.address.offset} is used by {other}")
                owner[(p.address.table, p.address.offset)] = f"bit:{p.name}"
                continue
            for i in range(max(p.registers, 1)):
                key2 = (p.address.table, p.address.offset + i)
                if key2 in owner:
                    errors.append(f"{p.name}: {key2[0]}:{key2[1]} overlaps {owner[key2].removeprefix('bit:')}")
                    break
                owner[key2] = p.name
        if errors:
            raise ValueError("; ".join(errors))
        return self


class OpcUaNode(_Bound):
    """One variable: ``id`` is a string id (``Oven1.Zone1.Temperature`` or ``s=...``) or numeric (``i=1001``).

    A string id's dotted prefix names the object folders it lives in (``Oven1`` / ``Oven1.Zone1``); a numeric
    node says where with ``parent`` (a dotted object path). ``browse_name`` defaults to the last part of the id
    (or the point name for numeric ids).
    """

    id: str = Field(pattern=r"^(i=\d+|s=.+|[^=;]+)$")
    type: Literal[
        "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double", "String"
    ]
    parent: str | None = None
    browse_name: str | None = None
    writable: bool = False

    @model_validator(mode="after")
    def _placed(self) -> OpcUaNode:
        if self.id.startswith("i=") and self.parent is None:
            raise ValueError("a numeric node id needs parent (e.g. Oven1)")
        return self


class OpcUaSection(_Strict):
    namespace: str = Field("urn:acme:oven", min_length=1, description="Namespace URI (index 2 on the server)")
    nodes: list[OpcUaNode] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> OpcUaSection:
        for attr in ("name", "id"):
            seen: set[str] = set()
            for n in self.nodes:
                key = getattr(n, attr).removeprefix("s=")
                if key in seen:
                    raise ValueError(f"duplicate node {attr} {key!r}")
                seen.add(key)
        return self


class PlantConfig(_Strict):
    """The whole plant file."""

    seed: int | None = Field(None, description="Seed of the random draws (random walk, faults); none: random")
    update_interval: Duration = 0.1
    signals: dict[Name, Signal] = Field(default_factory=dict)
    modbus: ModbusSection | None = None
    opcua: OpcUaSection | None = None

    def output_names(self) -> list[str]:
        """Every name a point can bind to: plain signals, and ``<machine>.<output>``."""
        out: list[str] = []
        for name, sig in self.signals.items():
            out.extend([f"{name}.{o}" for o in MACHINE_OUTPUTS] if isinstance(sig, MachineSignal) else [name])
        return out

    @model_validator(mode="after")
    def _signals_exist(self) -> PlantConfig:
        known = set(self.output_names())
        bound: list[_Bound] = [*(self.modbus.points if self.modbus else []), *(self.opcua.nodes if self.opcua else [])]
        missing = sorted({f"{b.name} -> {b.signal}" for b in bound if b.signal is not None and b.signal not in known})
        if missing:
            raise ValueError(f"unknown signal(s): {', '.join(missing)}; known: {', '.join(sorted(known))}")
        return self


def _line_of(root: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` that ruamel recorded a position for."""
    node, line = root, None
    for key in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and key in node:
                line = lc.key(key)[0] + 1 if lc is not None else line
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                line = lc.item(key)[0] + 1 if lc is not None else line
            else:
                continue
        except (KeyError, IndexError, TypeError):
            pass
        node = node[key]
    return line


def load_plant_config(path: str | Path | None = None) -> PlantConfig:
    """Read and validate a plant file (default: the bundled ``simulators/plant.yaml``).

    Raises :class:`PlantConfigError` listing every problem with its file and line.
    """
    path = Path(path) if path is not None else DEFAULT_PLANT
    try:
        data = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlantConfigError(f"{path}: cannot read the plant file: {exc.strerror or exc}") from exc
    except YAMLError as exc:
        raise PlantConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PlantConfigError(f"{path}: expected a mapping with signals / modbus / opcua")
    try:
        return PlantConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "signals" and loc[2] in _UNION_TAGS:
                loc = loc[:2] + loc[3:]
            line = _line_of(data, loc)
            where = ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in loc).replace(".[", "[")
            lines.append(f"{path}:{line if line is not None else 1}: {where or '(top)'}: {err['msg']}")
        raise PlantConfigError("invalid plant file:\n  " + "\n  ".join(lines)) from None


_UNION_TAGS = frozenset({"sine", "ramp", "counter", "random_walk", "constant", "machine"})
