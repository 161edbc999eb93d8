"""Building blocks shared by every config section and by the drivers' own config models."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    model_validator,
)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``100ms``, ``1s``, ``1.5s``, ``5m``, ``1h`` or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 100ms, 1s, 5m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration; use a number with ms, s, m or h, e.g. 100ms, 1s, 5m")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 100ms, 1s, 5m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "Duration: 100ms, 1s, 5m, 1h, or a number of seconds",
        }
    ),
]


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
NAME_RULE = "use letters, digits, '_', '-' and '.' only (no spaces), not starting with '-' or '.'"

Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN,
        description="Letters, digits, '_', '-', '.'; used in MQTT topics and URLs",
    ),
]

Aggregate = Literal["min", "max", "mean", "count"]
ReduceMode = Literal["rbe", "raw", "lttb", "swinging_door"]


class TagBase(StrictModel):
    """Fields every tag has, whatever the driver. Drivers subclass it and add their addressing."""

    name: Name
    description: str | None = None
    unit: str | None = Field(None, description="Engineering unit, shown on the status API (e.g. bar, degC)")
    scale: float = Field(1.0, description="value = raw * scale + offset")
    offset: float = 0.0
    deadband: float = Field(
        0.0, ge=0, description="Absolute deadband: publish only when the value moved more than this (0: any change)"
    )
    heartbeat: Duration | None = Field(
        None, description="Publish at least this often even without change (default: mqtt.heartbeat)"
    )
    aggregate: list[Aggregate] = Field(
        default_factory=list, description="Window aggregates sent with each publish: min, max, mean, count"
    )
    mode: ReduceMode = Field(
        "rbe",
        description="rbe: report by exception (last value); raw: every sample of the window; lttb: `points` "
        "samples per window keeping the shape; swinging_door: samples a line within `deviation` needs "
        "(see docs/reduction.md)",
    )
    deadband_percent: float = Field(
        0.0, ge=0, le=100, description="rbe: publish only when the value moved more than this percent of the last "
        "value sent (with `deadband` too: the larger threshold applies)"
    )
    points: int = Field(20, ge=3, le=10000, description="lttb: samples kept per publish window")
    deviation: float = Field(
        0.0, ge=0, description="swinging_door: compression deviation in engineering units (max time: heartbeat)"
    )
    writable: bool = Field(
        False, description="Allow writes to this tag through the API and MQTT commands (docs/write-back.md)"
    )
    min: float | None = Field(None, description="Writes below this value (engineering units) are refused")
    max: float | None = Field(None, description="Writes above this value (engineering units) are refused")

    @model_validator(mode="after")
    def _write_limits(self) -> "TagBase":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        return self


#: the reduction fields of a tag that an uplink's ``reduce:`` profile may set for every tag
REDUCTION_FIELDS = ("mode", "deadband", "deadband_percent", "aggregate", "points", "deviation")

ReduceProfile = create_model(
    "ReduceProfile",
    __base__=StrictModel,
    __doc__="Reduction defaults of an uplink: apply to every tag that does not set the same field itself.",
    **{f: (TagBase.model_fields[f].annotation, TagBase.model_fields[f]) for f in REDUCTION_FIELDS},  # type: ignore[call-overload]
)
"""The reduction fields of :class:`TagBase`, declared there once."""


def empty_is_none(v: Any) -> Any:
    """A ``mode="before"`` validator: an empty string (e.g. an unset ``${VAR:-}``) means the key is not set."""
    return None if v == "" else v


class SourceBase(StrictModel):
    """Fields every source has. Drivers subclass it and add ``driver: Literal[...]`` and their connection."""

    if TYPE_CHECKING:  # every driver's subclass declares it, as a Literal of its own name
        driver: str

    poll: Duration = Field(1.0, gt=0, description="Poll interval")
    timeout: Duration = Field(2.0, gt=0, description="Timeout of one connect or read")
    retry_max: Duration = Field(30.0, gt=0, description="Longest wait between reconnect attempts (backoff cap)")

    def claims(self) -> tuple[Claim, ...]:
        """The ports and addresses this source uses (see :class:`Claim`); none by default."""
        return ()


def tcp_resource(host: str, port: int) -> str:
    """The resource name of a TCP address in :class:`Claim`: ``tcp:<host lower case>:<port>``."""
    return f"tcp:{host.strip('[]').lower()}:{port}"


def serial_resource(port: str) -> str:
    """The resource name of a serial port in :class:`Claim`: ``serial:<real path>`` (a ``/dev/serial/by-id``
    symlink and the device it points to are one port)."""
    return "serial:" + os.path.realpath(port)


#: the words a parity may be written as, and the letter each one is (pyserial's PARITY_* constants)
PARITY_LETTERS = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


def parity_letter(value: str) -> str:
    """``even`` -> ``E`` (a letter stays as it is): the one spelling a validated parity has."""
    return PARITY_LETTERS.get(value, value)


Parity = Annotated[
    Literal["N", "E", "O", "M", "S", "none", "even", "odd", "mark", "space"], AfterValidator(parity_letter)
]
"""A serial parity as integrators write it, a letter (``E``, Modbus manuals) or a word (``even``, instrument
manuals); the validated value is always the letter, so ``E`` and ``even`` are one setting. A protocol that
allows fewer declares its own subset with the same validator (Modbus RTU: N, E, O)."""


if TYPE_CHECKING:
    StopBits = float  # a Literal may not hold a float for mypy; pydantic checks the three values
else:
    StopBits = Literal[1, 1.5, 2]


class SerialLine(StrictModel):
    """The line settings of a serial port, declared once for every serial driver (Modbus RTU, serial
    instruments). A driver's source model subclasses it; it may change a default (Modbus RTU: parity E) and
    refuse what its protocol cannot use (Modbus RTU: 8 data bits, no mark or space parity)."""

    port: str = Field(
        min_length=1, description="Serial device, e.g. /dev/ttyUSB0, /dev/ttyAMA0 or /dev/serial/by-id/..."
    )
    baudrate: int = Field(9600, ge=50, le=4_000_000, description="Bits per second, e.g. 9600, 19200, 38400, 115200")
    bytesize: Literal[5, 6, 7, 8] = Field(8, description="Data bits per character (Modbus RTU needs 8)")
    parity: Parity = Field("N", description="N (none), E (even), O (odd), M (mark) or S (space); the words work too")
    stopbits: StopBits = Field(1, description="Stop bits: 1, 1.5 or 2")

    def line_settings(self) -> tuple[tuple[str, Any], ...]:
        """``(field, value)`` of the settings every asset on one port must share (:attr:`Claim.settings`);
        the parity as its letter."""
        return (("baudrate", self.baudrate), ("parity", self.parity), ("stopbits", self.stopbits),
                ("bytesize", self.bytesize))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Claim:
    """Something a source uses that other parts of the same config may share or clash on.

    A source lists its claims in :meth:`SourceBase.claims`; ``validate`` (the root model) compares every
    claim of every asset, so that a conflict ``run`` would only meet at start-up is a config error with a
    line. Two claims on one ``resource`` (``serial:/dev/ttyUSB0`` by its real path, ``tcp:host:port``):

    - clash when their ``user`` differs (a Modbus RTU bus and a serial instrument cannot share a port) or
      when ``shared`` is false (a port opened exclusively by one asset);
    - must have equal ``settings`` (``(field, value)`` pairs, e.g. baudrate and parity of one RS-485 line);
    - must have different ``member`` values when set (``("unit", 3)``: one unit id once per bus).

    ``field`` is the source field that names the resource (where a clash is reported).
    """

    resource: str
    user: str
    field: str
    shared: bool = True
    settings: tuple[tuple[str, Any], ...] = ()
    member: tuple[str, Any] | None = None
