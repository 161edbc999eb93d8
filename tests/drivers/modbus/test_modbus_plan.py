"""Compiling tags into the fewest Modbus read requests."""

from __future__ import annotations

import pytest

from drivers.modbus.address import Table
from drivers.modbus.config import ModbusTag
from drivers.modbus.plan import PlanError, compile_plan


def tags(*specs: tuple) -> list[ModbusTag]:
    out = []
    for i, spec in enumerate(specs):
        address, type_, *rest = spec
        kw = {"length": rest[0]} if rest else {}
        out.append(ModbusTag(name=f"t{i}", address=address, type=type_, **kw))
    return out


def spans(plan) -> list[tuple[str, int, int]]:
    return [(r.table.value, r.start, r.count) for r in plan.requests]


def test_demo_press_is_one_request_per_table() -> None:
    plan = compile_plan(
        tags(
            ("40001", "float32"),
            ("40003", "uint32"),
            ("30001", "int16"),
            ("00001", "bool"),
            ("40010.3", "bit"),
            ("40020", "string", 8),
        )
    )
    assert spans(plan) == [("co", 0, 1), ("ir", 0, 1), ("hr", 0, 27)]
    assert plan.names == ("t0", "t1", "t2", "t3", "t4", "t5")


def test_gap_is_read_through_up_to_max_gap() -> None:
    t = tags(("hr:0", "uint16"), ("hr:17", "uint16"))  # 16 unused registers in between
    assert spans(compile_plan(t, max_gap=16)) == [("hr", 0, 18)]
    assert spans(compile_plan(t, max_gap=15)) == [("hr", 0, 1), ("hr", 17, 1)]


def test_max_gap_zero_merges_only_adjacent_and_overlapping_tags() -> None:
    t = tags(("hr:0", "uint32"), ("hr:2", "int16"), ("hr:2.5", "bit"), ("hr:4", "int16"))
    assert spans(compile_plan(t, max_gap=0)) == [("hr", 0, 3), ("hr", 4, 1)]


def test_requests_split_at_125_registers_without_cutting_a_value() -> None:
    t = tags(*[(f"hr:{i}", "uint16") for i in range(130)])
    assert spans(compile_plan(t)) == [("hr", 0, 125), ("hr", 125, 5)]
    floats = tags(*[(f"hr:{2 * i}", "float32") for i in range(5)])
    assert spans(compile_plan(floats, max_registers_per_read=5)) == [("hr", 0, 4), ("hr", 4, 4), ("hr", 8, 2)]


def test_lower_register_limit_for_picky_devices() -> None:
    t = tags(*[(f"ir:{i}", "int16") for i in range(30)])
    assert [c for _, _, c in spans(compile_plan(t, max_registers_per_read=10))] == [10, 10, 10]


def test_a_value_larger_than_one_read_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="'t0' .*20 registers.*max_registers_per_read=16"):
        compile_plan(tags(("hr:0", "string", 20)), max_registers_per_read=16)


def test_tables_are_never_merged() -> None:
    t = tags(("40001", "uint16"), ("30001", "uint16"), ("00001", "bool"), ("10001", "bool"))
    assert spans(compile_plan(t)) == [("co", 0, 1), ("di", 0, 1), ("ir", 0, 1), ("hr", 0, 1)]


def test_coils_split_at_2000_bits_and_gap_in_bits() -> None:
    t = tags(("co:0", "bool"), ("co:1000", "bool"), ("co:1999", "bool"), ("co:2000", "bool"))
    assert spans(compile_plan(t, max_gap=63)) == [("co", 0, 2000), ("co", 2000, 1)]  # gaps of 999 <= 16 x 63
    t = tags(("di:0", "bool"), ("di:257", "bool"))  # 256 unused bits = 16 x max_gap 16
    assert spans(compile_plan(t)) == [("di", 0, 258)]
    assert len(compile_plan(t, max_gap=15).requests) == 2
    assert spans(compile_plan(tags(("co:0", "bool"), ("co:9", "bool")), max_bits_per_read=8)) == [
        ("co", 0, 1),
        ("co", 9, 1),
    ]


def test_sixteen_bits_of_one_register_are_one_request_of_one_register() -> None:
    plan = compile_plan(tags(*[(f"hr:5.{b}", "bit") for b in range(16)]))
    assert spans(plan) == [("hr", 5, 1)]
    (group,) = plan.requests[0].bits
    assert sorted(group.shifts.tolist()) == list(range(16))


def test_requests_know_their_tags_and_groups() -> None:
    t = tags(
        ("hr:0", "float32"),
        ("hr:10", "int16"),
        ("hr:2", "float32"),
        ("hr:200", "uint16"),
    )
    t[2] = ModbusTag(name="t2", address="hr:2", type="float32", byte_order="CDAB")
    plan = compile_plan(t)
    first, second = plan.requests
    assert first.positions.tolist() == [0, 1, 2]
    assert second.positions.tolist() == [3]
    kinds = {(g.type, g.byte_order): g.positions.tolist() for g in first.numeric}
    assert kinds == {("float32", "ABCD"): [0], ("int16", "ABCD"): [1], ("float32", "CDAB"): [2]}
    assert "4 tags in 2 read requests" in plan.describe()


def test_scaling_flag() -> None:
    assert not compile_plan(tags(("hr:0", "int16"))).needs_scaling
    scaled = [ModbusTag(name="x", address="hr:0", type="int16", scale=0.1)]
    assert compile_plan(scaled).needs_scaling


def test_request_tables_are_ordered_and_typed() -> None:
    plan = compile_plan(tags(("hr:3", "uint16"), ("hr:0", "uint16")))
    assert plan.requests[0].table is Table.HOLDING_REGISTER
    assert plan.requests[0].start == 0 and plan.requests[0].count == 4
