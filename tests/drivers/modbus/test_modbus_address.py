"""Modbus addresses in the integrator's forms, and the tag validation that depends on them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.modbus.address import AddressError, ModbusAddress, Table, parse_address
from drivers.modbus.config import ModbusTag, ModbusTcpSource


class YamlFloat(float):
    """What the config loader hands over for a YAML float: the value plus the text as written."""

    text: str

    def __new__(cls, text: str) -> "YamlFloat":
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj


HR, IR, CO, DI = Table.HOLDING_REGISTER, Table.INPUT_REGISTER, Table.COIL, Table.DISCRETE_INPUT


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("40001", ModbusAddress(HR, 0)),
        (40001, ModbusAddress(HR, 0)),
        ("49999", ModbusAddress(HR, 9998)),
        ("400001", ModbusAddress(HR, 0)),
        (465536, ModbusAddress(HR, 65535)),
        ("30001", ModbusAddress(IR, 0)),
        ("00001", ModbusAddress(CO, 0)),
        ("000100", ModbusAddress(CO, 99)),
        (10001, ModbusAddress(DI, 0)),
        ("100001", ModbusAddress(DI, 0)),
        ("4x0001", ModbusAddress(HR, 0)),
        ("3X10", ModbusAddress(IR, 9)),
        ("hr:0", ModbusAddress(HR, 0)),
        ("IR:65535", ModbusAddress(IR, 65535)),
        ("co:7", ModbusAddress(CO, 7)),
        ("di:0", ModbusAddress(DI, 0)),
        (" hr:12 ", ModbusAddress(HR, 12)),
        ("40010.3", ModbusAddress(HR, 9, 3)),
        (40010.3, ModbusAddress(HR, 9, 3)),
        (YamlFloat("40010.10"), ModbusAddress(HR, 9, 10)),  # repr() would say 40010.1
        ("hr:9.15", ModbusAddress(HR, 9, 15)),
        ("4x10.0", ModbusAddress(HR, 9, 0)),
        ("30002.7", ModbusAddress(IR, 1, 7)),
    ],
)
def test_accepted_forms(written: object, expected: ModbusAddress) -> None:
    assert parse_address(written) == expected


@pytest.mark.parametrize(
    ("written", "hint"),
    [
        (1, "quote it in YAML"),  # what YAML makes of an unquoted 00001
        (1234, "no table digit"),
        ("1234", "needs 5 or 6"),
        ("4000001", "needs 5 or 6"),
        ("20001", "first digit 2 is not a Modbus table"),
        ("40000", "out of range 1..65536"),
        ("465537", "out of range 1..65536"),
        ("hr:65536", "out of range 0..65535"),
        ("xx:1", "not a Modbus address"),
        ("", "empty address"),
        ("40010.16", "bit 16 is out of range"),
        ("00001.2", "a coil is already one bit"),
        ("di:3.1", "a discrete input is already one bit"),
        (True, "not a Modbus address"),
        (-40001, "no table digit"),
    ],
)
def test_rejected_forms_say_why_and_show_accepted_forms(written: object, hint: str) -> None:
    with pytest.raises(AddressError, match=None) as err:
        parse_address(written)
    assert hint in str(err.value)


def test_bare_small_integer_message_lists_the_accepted_forms() -> None:
    with pytest.raises(ValidationError) as err:
        ModbusTag(name="running", address=1, type="bool")
    text = str(err.value)
    assert "00001" in text and "hr:0" in text and "40001" in text


def tag(**kw: object) -> ModbusTag:
    return ModbusTag(name="t", **kw)


def test_tag_keeps_the_address_as_written_and_exposes_the_parsed_one() -> None:
    t = tag(address=YamlFloat("40010.10"), type="bit")
    assert t.address == "40010.10"
    assert t.ref == ModbusAddress(HR, 9, 10)
    assert tag(address="00001", type="bool").model_dump()["address"] == "00001"


@pytest.mark.parametrize(
    ("kw", "hint"),
    [
        ({"address": "40001", "type": "bool"}, "type bool needs a coil or discrete input"),
        ({"address": "00001", "type": "int16"}, "use type bool"),
        ({"address": "10001", "type": "bit"}, "use type bool"),
        ({"address": "40001", "type": "bit"}, "type bit needs a bit number"),
        ({"address": "40001.2", "type": "uint16"}, "use type bit"),
        ({"address": "40001", "type": "string"}, "type string needs length"),
        ({"address": "40001", "type": "uint16", "length": 2}, "length applies only to type string"),
        ({"address": "40001", "type": "int16", "byte_order": "CDAB"}, "use ABCD or BADC"),
        ({"address": "40001", "type": "uint16", "byte_order": "DCBA"}, "use ABCD or BADC"),
        ({"address": "40001.1", "type": "bit", "byte_order": "BADC"}, "use ABCD"),
        ({"address": "00001", "type": "bool", "byte_order": "DCBA"}, "use ABCD"),
        ({"address": "40001", "type": "string", "length": 126}, "less than or equal to 125"),
        ({"address": "465536", "type": "float32"}, "up to register 65536"),
        ({"address": "hr:65533", "type": "float64"}, "needs 4 registers, up to register 65536"),
        ({"address": "hr:65530", "type": "string", "length": 7}, "up to register 65536"),
    ],
)
def test_tag_validation_rejects_inconsistent_tags(kw: dict, hint: str) -> None:
    with pytest.raises(ValidationError) as err:
        tag(**kw)
    assert hint in str(err.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"address": "465535", "type": "float32", "byte_order": "DCBA"},
        {"address": "hr:65532", "type": "uint64", "byte_order": "CDAB"},
        {"address": "465536", "type": "int16", "byte_order": "BADC"},
        {"address": "30001", "type": "string", "length": 125, "byte_order": "BADC"},
        {"address": "465536.15", "type": "bit"},
        {"address": "10001", "type": "bool"},
    ],
)
def test_tag_validation_accepts_edge_cases(kw: dict) -> None:
    tag(**kw)


def test_source_defaults_and_limits() -> None:
    src = ModbusTcpSource(driver="modbus_tcp", host="10.0.0.5")
    assert (src.port, src.unit, src.max_registers_per_read, src.max_bits_per_read) == (502, 1, 125, 2000)
    for bad in ({"unit": 248}, {"max_registers_per_read": 126}, {"max_bits_per_read": 2001}, {"port": 0}):
        with pytest.raises(ValidationError):
            ModbusTcpSource(driver="modbus_tcp", host="10.0.0.5", **bad)
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModbusTcpSource(driver="modbus_tcp", host="10.0.0.5", slave=1)


@pytest.mark.parametrize("address", ["30001", "10001"])
def test_writable_input_registers_and_discrete_inputs_are_config_errors(address):
    from pydantic import ValidationError

    from drivers.modbus.config import ModbusTag

    with pytest.raises(ValidationError, match="read-only in Modbus"):
        ModbusTag(name="x", address=address, type="bool" if address.startswith("1") else "int16", writable=True)
