"""Config models of Modbus RTU sources: ``driver: modbus_rtu`` (serial) and ``driver: modbus_rtu_tcp``.

Tags are the same :class:`~drivers.modbus.config.ModbusTag` as Modbus TCP (every address form, type and
byte order). Several assets naming the same ``port`` share one bus; their line settings must agree.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from drivers.modbus.config import ModbusReadLimits
from gateway.config.common import Claim, Duration, SerialLine, parity_letter, serial_resource, tcp_resource

#: the parities Modbus RTU allows (no mark or space), as a letter or a word; validated to the letter
RtuParity = Annotated[Literal["N", "E", "O", "none", "even", "odd"], AfterValidator(parity_letter)]


class _RtuCommon(ModbusReadLimits):
    unit: int = Field(1, ge=1, le=247, description="Modbus slave address (unit id) on the bus, 1..247")
    response_timeout: Duration = Field(
        0.5,
        gt=0,
        description=(
            "How long this slave may stay silent after a request before it counts as not answering. "
            "It is the bus time a dead slave costs; `timeout` covers a whole poll including waiting for the bus."
        ),
    )
    retries: int = Field(
        1,
        ge=0,
        le=5,
        description=(
            "How often a request that got no usable answer (timeout, CRC error, truncated frame) is sent again "
            "before its poll fails; a slave that is busy once does not drop out of the poll"
        ),
    )
    silent_after_timeout: Duration = Field(
        0.6,
        ge=0,
        description=(
            "After a request of this slave that timed out, nothing is sent on the bus until this long after that "
            "request (so the pause is silent_after_timeout - response_timeout, none if that is negative). Slaves "
            "built on libmodbus wait up to their own response timeout (0.5 s by default) for the answer to a "
            "request for another unit and ignore the next frame meanwhile; 0 turns the pause off"
        ),
    )
    demote_after: int = Field(
        3, ge=1, le=100, description="Failed requests in a row after which the slave is demoted to slow_retry"
    )
    slow_retry: Duration = Field(
        30.0, gt=0, description="A demoted slave is tried once per this interval, so the others keep their rates"
    )

    @model_validator(mode="after")
    def _timeouts(self) -> _RtuCommon:
        if self.timeout < 2 * self.response_timeout:
            raise ValueError(
                f"timeout ({self.timeout:g} s) must be at least twice response_timeout ({self.response_timeout:g} s): "
                f"a poll may wait for another slave's answer on the bus before its own"
            )
        return self


class ModbusRtuSource(SerialLine, _RtuCommon):
    """A Modbus RTU slave on a local serial port (RS-485 / RS-232 adapter)."""

    # the line settings are the common SerialLine, with the Modbus default (8E1) and what Modbus allows of them

    driver: Literal["modbus_rtu"]
    parity: RtuParity = Field(  # a subset of SerialLine's
        "E", description="E (even, the Modbus default), O (odd) or N (none; the spec then asks for stopbits: 2); "
        "even, odd, none work too"
    )
    stopbits: Literal[1, 2] = Field(1, description="1 or 2 stop bits")  # a subset of SerialLine's

    @field_validator("bytesize")
    @classmethod
    def _eight_bits(cls, value: int) -> int:
        if value != 8:
            raise ValueError(f"Modbus RTU needs 8 data bits (bytesize {value} is Modbus ASCII, not supported)")
        return value

    def claims(self) -> tuple[Claim, ...]:
        """The serial port (by its real path, as the bus arbiter keys it): one line, one unit id per slave."""
        line = self.line_settings()
        return (Claim(serial_resource(self.port), "Modbus RTU bus", "port", True, line, ("unit", self.unit)),)


class ModbusRtuTcpSource(_RtuCommon):
    """Modbus RTU frames over TCP: a serial-to-Ethernet converter in transparent mode (not a Modbus TCP gateway)."""

    driver: Literal["modbus_rtu_tcp"]
    host: str = Field(min_length=1, description="Host name or IP address of the converter")
    port: int = Field(ge=1, le=65535, description="TCP port of the converter's serial channel (often 4001, 502 or 8899)")

    def claims(self) -> tuple[Claim, ...]:
        """The converter's TCP channel: one RTU bus, one unit id per slave."""
        return (Claim(tcp_resource(self.host, self.port), "Modbus RTU over TCP", "host", True, (), ("unit", self.unit)),)
