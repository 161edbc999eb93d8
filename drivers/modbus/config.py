"""Config models of a Modbus TCP source and its tags (the ``source:`` and ``tags:`` of a modbus_tcp asset)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, WithJsonSchema, model_validator

from drivers.modbus.address import MAX_OFFSET, ModbusAddress, Table, address_text, parse_address
from gateway.config.common import Claim, SourceBase, TagBase, tcp_resource

DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "bit", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

#: Registers occupied by one value of each fixed-size register type (strings: ``length``).
REGISTERS: dict[str, int] = {
    "int16": 1, "uint16": 1, "bit": 1,
    "int32": 2, "uint32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "float64": 4,
}  # fmt: skip

#: Byte orders allowed per type. 16-bit values and strings have no word order, only a byte order within
#: the register (BADC = low byte first); a bit or a bool has no byte order at all.
_ALLOWED_ORDERS: dict[str, tuple[str, ...]] = {
    "int16": ("ABCD", "BADC"), "uint16": ("ABCD", "BADC"), "string": ("ABCD", "BADC"),
    "bit": ("ABCD",), "bool": ("ABCD",),
}  # fmt: skip


def _address_before(value: Any) -> str:
    return address_text(value)


def _address_check(value: str) -> str:
    parse_address(value)
    return value


Address = Annotated[
    str,
    BeforeValidator(_address_check),
    BeforeValidator(_address_before),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 10000}, {"type": "number"}],
            "description": (
                'Modbus address: "40001" (5/6 digits, 1-based, first digit the table: 0 coil, 1 discrete input, '
                '3 input register, 4 holding register), "4x0001", 0-based "hr:0"/"ir:0"/"co:0"/"di:0", '
                'bit of a register "40010.3" / "hr:9.3". Quote addresses with leading zeros.'
            ),
            "examples": ["40001", "30001", "00001", "hr:0", "40010.3"],
        }
    ),
]


class ModbusReadLimits(SourceBase):
    """Read-size limits shared by every Modbus source (TCP, RTU, RTU over TCP)."""

    max_registers_per_read: int = Field(
        125, ge=1, le=125, description="Largest register read request; lower it for devices that refuse 125"
    )
    max_bits_per_read: int = Field(2000, ge=1, le=2000, description="Largest coil / discrete input read request")
    max_gap: int = Field(
        16,
        ge=0,
        le=124,
        description=(
            "Unused registers read through to merge two reads into one (a gap of bits is merged up to "
            "16 x max_gap bits). 0: only adjacent tags are merged. Lower it if the device refuses reads "
            "that span unmapped registers."
        ),
    )


class ModbusTcpSource(ModbusReadLimits):
    """A Modbus TCP device (or a gateway in front of serial devices, addressed by ``unit``)."""

    driver: Literal["modbus_tcp"]
    host: str = Field(min_length=1, description="Host name or IP address of the device")
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=247, description="Modbus unit id (slave / device id)")
    max_in_flight: int = Field(
        1,
        ge=1,
        le=16,
        description=(
            "Requests of one poll sent back to back on the connection before their answers (matched by "
            "transaction id). 1 (the default) is safe with every device; raise it only for a device or "
            "gateway that accepts several transactions per connection."
        ),
    )

    def claims(self) -> tuple[Claim, ...]:
        """The device's TCP address: shared with other Modbus TCP assets (units behind one gateway)."""
        return (Claim(tcp_resource(self.host, self.port), "Modbus TCP", "host"),)


class ModbusTag(TagBase):
    """One value read from a Modbus device."""

    address: Address
    type: DataType = Field(description="Data type of the value; bool for coils/discrete inputs, bit for 40010.3")
    byte_order: ByteOrder = Field(
        "ABCD",
        description=(
            "ABCD big endian; CDAB word-swapped; BADC byte-swapped within each word; DCBA little endian. "
            "16-bit values and strings: ABCD or BADC (low byte first) only."
        ),
    )
    length: int | None = Field(
        None, ge=1, le=125, description="string only: number of registers (2 ASCII characters each)"
    )

    _ref: ModbusAddress | None = PrivateAttr(None)

    @property
    def ref(self) -> ModbusAddress:
        """The parsed address."""
        if self._ref is None:
            self._ref = parse_address(self.address)
        return self._ref

    @property
    def registers(self) -> int:
        """Registers (or bits, for bool) this value occupies."""
        if self.type == "string":
            return self.length or 0
        return REGISTERS.get(self.type, 1)

    @model_validator(mode="after")
    def _consistent(self) -> "ModbusTag":
        ref = parse_address(self.address)
        where = (
            f"address {self.address!r} ({ref.table.label} {ref.offset}{'' if ref.bit is None else f' bit {ref.bit}'})"
        )
        if self.type == "bool":
            if not ref.table.is_bits:
                raise ValueError(
                    f"type bool needs a coil or discrete input, but {where} is a register; "
                    f"for one bit of a register use type bit with an address like 40010.3"
                )
        elif ref.table.is_bits:
            raise ValueError(f"{where} holds single bits: use type bool (not {self.type})")
        elif self.type == "bit":
            if ref.bit is None:
                raise ValueError(f"type bit needs a bit number in the address, e.g. {self.address}.3 or hr:9.3")
        elif ref.bit is not None:
            raise ValueError(f"{where} selects one bit: use type bit (not {self.type}), or drop the .{ref.bit}")

        if self.type == "string":
            if self.length is None:
                raise ValueError("type string needs length: the number of registers (2 characters each), 1..125")
        elif self.length is not None:
            raise ValueError(f"length applies only to type string (this tag is {self.type})")

        allowed = _ALLOWED_ORDERS.get(self.type)
        if allowed is not None and self.byte_order not in allowed:
            why = " (a value within one register has no word order)" if len(allowed) > 1 else ""
            raise ValueError(
                f"byte_order {self.byte_order} does not apply to type {self.type}{why}; use {' or '.join(allowed)}"
            )

        if self.writable and ref.table in (Table.INPUT_REGISTER, Table.DISCRETE_INPUT):
            raise ValueError(f"{where} is read-only in Modbus: writable: true needs a holding register or a coil")

        last = ref.offset + self.registers - 1
        if last > MAX_OFFSET:
            raise ValueError(
                f"a {self.type} at {where} needs {self.registers} registers, up to register {last}, "
                f"past the last register 65535"
            )
        return self
