"""Compile a source's tags, once, into the fewest Modbus read requests and their decoding tables.

The result, a :class:`ReadPlan`, is pure data: the driver issues ``plan.requests`` in order, copies the
words of every register response into one poll buffer (``plan.word_offset`` says where each request's
words go) and hands the whole buffer to :mod:`drivers.modbus.decode`, which does one NumPy gather per
(type, byte order) group per poll with the arrays prepared here (``plan.numeric``: groups merged across
requests, indices global to the poll buffer). Nothing in this module runs per poll.

Coalescing, per table (coils, discrete inputs, input registers, holding registers): tags are sorted by
start address and merged greedily while the request stays within ``max_registers_per_read`` (or
``max_bits_per_read``) and the hole between two tags is at most ``max_gap`` registers (``16 * max_gap``
bits for coils and discrete inputs). Greedy from the lowest address gives the fewest requests for these
two constraints. Overlapping tags (several bits of one register, a float and its raw words) share reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from drivers.modbus.address import Table
from drivers.modbus.config import ModbusTag

#: NumPy dtype (big endian) of each multi-byte numeric type, after the words are put in ABCD order.
NUMPY_TYPES: dict[str, str] = {
    "int16": ">i2", "uint16": ">u2",
    "int32": ">i4", "uint32": ">u4", "float32": ">f4",
    "int64": ">i8", "uint64": ">u8", "float64": ">f8",
}  # fmt: skip

_TABLE_ORDER = (Table.COIL, Table.DISCRETE_INPUT, Table.INPUT_REGISTER, Table.HOLDING_REGISTER)


class PlanError(ValueError):
    """The tags cannot be read with this source's limits (e.g. a string longer than max_registers_per_read)."""


@dataclass(frozen=True, slots=True)
class NumericGroup:
    """Tags of one (type, byte_order) in one request.

    ``words`` is (n_tags, n_words) indices into the response's registers, already permuted into
    big-endian word order (so CDAB/DCBA cost nothing at decode time). ``swap_bytes`` is set for BADC and
    DCBA: the two bytes of every word are exchanged.
    """

    type: str
    byte_order: str
    positions: np.ndarray  # intp (n_tags,), plan positions
    words: np.ndarray  # intp (n_tags, n_words)
    swap_bytes: bool
    dtype: np.dtype
    is_float: bool


@dataclass(frozen=True, slots=True)
class BitGroup:
    """``bit`` tags of one request: value = (register[words] >> shifts) & 1."""

    positions: np.ndarray  # intp
    words: np.ndarray  # intp
    shifts: np.ndarray  # uint16


@dataclass(frozen=True, slots=True)
class StringGroup:
    """``string`` tags of one (length, byte order) in one request; ``words`` is (n_tags, length)."""

    positions: np.ndarray
    words: np.ndarray
    swap_bytes: bool


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers (or bits) of ``table`` from 0-based ``start``.

    ``positions`` are the plan positions of every tag this request serves (all marked bad together
    when the device answers this request with an exception). For coil / discrete-input requests
    ``bit_positions`` and ``bit_index`` map response bits to tags.
    """

    table: Table
    start: int
    count: int
    positions: np.ndarray
    numeric: tuple[NumericGroup, ...] = ()
    bits: tuple[BitGroup, ...] = ()
    strings: tuple[StringGroup, ...] = ()
    bit_positions: np.ndarray | None = None
    bit_index: np.ndarray | None = None

    def __str__(self) -> str:
        unit = "bits" if self.table.is_bits else "registers"
        return f"{self.table.value}:{self.start}+{self.count} ({unit}, {len(self.positions)} tags)"


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Every tag of a source compiled into read requests. Plan positions are the tags' config order."""

    names: tuple[str, ...]
    requests: tuple[ReadRequest, ...]
    scale: np.ndarray  # float64 per plan position
    offset: np.ndarray  # float64 per plan position
    needs_scaling: bool
    #: per request: where its words start in the poll buffer of all register responses (-1 for bit tables)
    word_offset: tuple[int, ...] = ()
    #: length of that poll buffer (sum of the register requests' counts)
    register_words: int = 0
    #: the requests' numeric / bit / string groups merged per kind across requests, ``words`` indexing the
    #: poll buffer: what :func:`drivers.modbus.decode.decode_poll` gathers, once per group per poll
    numeric: tuple[NumericGroup, ...] = ()
    bits: tuple[BitGroup, ...] = ()
    strings: tuple[StringGroup, ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        """One line for logs: how many tags are read with how many requests."""
        return f"{len(self.names)} tags in {len(self.requests)} read requests: " + ", ".join(map(str, self.requests))


def _coalesce(spans: list[tuple[int, int, int]], max_len: int, max_gap: int) -> list[list[tuple[int, int, int]]]:
    """Greedy merge of sorted (start, end_exclusive, position) spans into request groups."""
    groups: list[list[tuple[int, int, int]]] = []
    req_start = req_end = 0
    for span in spans:
        start, end, _ = span
        if groups and start - req_end <= max_gap and max(req_end, end) - req_start <= max_len:
            groups[-1].append(span)
            req_end = max(req_end, end)
        else:
            groups.append([span])
            req_start, req_end = start, end
    return groups


def _word_order(n_words: int, byte_order: str) -> np.ndarray:
    """Position in the response of the i-th big-endian word, relative to the value's first register."""
    if byte_order in ("CDAB", "DCBA"):
        return np.arange(n_words - 1, -1, -1, dtype=np.intp)
    return np.arange(n_words, dtype=np.intp)


def _register_request(table: Table, members: list[tuple[int, int, int]], tags: Sequence[ModbusTag]) -> ReadRequest:
    start = min(s for s, _, _ in members)
    count = max(e for _, e, _ in members) - start
    by_kind: dict[tuple[str, str, int], list[tuple[int, int]]] = {}
    for s, _, pos in members:
        tag = tags[pos]
        length = (tag.length or 0) if tag.type == "string" else 0
        by_kind.setdefault((tag.type, tag.byte_order, length), []).append((s - start, pos))

    numeric: list[NumericGroup] = []
    bits: list[BitGroup] = []
    strings: list[StringGroup] = []
    for (kind, order, length), entries in by_kind.items():
        rel = np.array([r for r, _ in entries], dtype=np.intp)
        positions = np.array([p for _, p in entries], dtype=np.intp)
        swap = order in ("BADC", "DCBA")
        if kind == "bit":
            shifts = np.array([tags[p].ref.bit for p in positions], dtype=np.uint16)
            bits.append(BitGroup(positions, rel, shifts))
        elif kind == "string":
            words = rel[:, None] + np.arange(length, dtype=np.intp)[None, :]
            strings.append(StringGroup(positions, words, swap))
        else:
            dtype = np.dtype(NUMPY_TYPES[kind])
            n_words = dtype.itemsize // 2
            words = rel[:, None] + _word_order(n_words, order)[None, :]
            numeric.append(NumericGroup(kind, order, positions, words, swap, dtype, dtype.kind == "f"))
    return ReadRequest(
        table=table,
        start=start,
        count=count,
        positions=np.array(sorted(p for _, _, p in members), dtype=np.intp),
        numeric=tuple(numeric),
        bits=tuple(bits),
        strings=tuple(strings),
    )


def _bit_request(table: Table, members: list[tuple[int, int, int]]) -> ReadRequest:
    start = min(s for s, _, _ in members)
    count = max(e for _, e, _ in members) - start
    positions = np.array([p for _, _, p in members], dtype=np.intp)
    index = np.array([s - start for s, _, _ in members], dtype=np.intp)
    return ReadRequest(
        table=table,
        start=start,
        count=count,
        positions=np.sort(positions),
        bit_positions=positions,
        bit_index=index,
    )


def _merge_groups(requests: Sequence[ReadRequest], offsets: Sequence[int]):
    """Every request's groups, merged per kind, with ``words`` shifted to the poll buffer."""
    numeric: dict[tuple[str, str], list[NumericGroup]] = {}
    strings: dict[tuple[int, bool], list[StringGroup]] = {}
    bits: list[BitGroup] = []
    for req, off in zip(requests, offsets):
        if off < 0:
            continue
        for g in req.numeric:
            numeric.setdefault((g.type, g.byte_order), []).append(
                NumericGroup(g.type, g.byte_order, g.positions, g.words + off, g.swap_bytes, g.dtype, g.is_float)
            )
        for b in req.bits:
            bits.append(BitGroup(b.positions, b.words + off, b.shifts))
        for sg in req.strings:
            strings.setdefault((sg.words.shape[1], sg.swap_bytes), []).append(
                StringGroup(sg.positions, sg.words + off, sg.swap_bytes)
            )
    merged_numeric = tuple(
        NumericGroup(
            gs[0].type,
            gs[0].byte_order,
            np.concatenate([g.positions for g in gs]),
            np.concatenate([g.words for g in gs]),
            gs[0].swap_bytes,
            gs[0].dtype,
            gs[0].is_float,
        )
        for gs in numeric.values()
    )
    merged_bits = (
        (
            BitGroup(
                np.concatenate([b.positions for b in bits]),
                np.concatenate([b.words for b in bits]),
                np.concatenate([b.shifts for b in bits]),
            ),
        )
        if bits
        else ()
    )
    merged_strings = tuple(
        StringGroup(np.concatenate([g.positions for g in gs]), np.concatenate([g.words for g in gs]), gs[0].swap_bytes)
        for gs in strings.values()
    )
    return merged_numeric, merged_bits, merged_strings


def compile_plan(
    tags: Sequence[ModbusTag],
    *,
    max_registers_per_read: int = 125,
    max_bits_per_read: int = 2000,
    max_gap: int = 16,
) -> ReadPlan:
    """Compile validated tags into a :class:`ReadPlan` (requests ordered by table, then address).

    Raises :class:`PlanError` if one tag alone is larger than ``max_registers_per_read``.
    """
    spans_by_table: dict[Table, list[tuple[int, int, int]]] = {}
    for pos, tag in enumerate(tags):
        ref = tag.ref
        size = tag.registers if not ref.table.is_bits else 1
        if not ref.table.is_bits and size > max_registers_per_read:
            raise PlanError(
                f"tag {tag.name!r} ({tag.type}, {size} registers) is larger than "
                f"max_registers_per_read={max_registers_per_read}"
            )
        spans_by_table.setdefault(ref.table, []).append((ref.offset, ref.offset + size, pos))

    requests: list[ReadRequest] = []
    for table in _TABLE_ORDER:
        spans = sorted(spans_by_table.get(table, []))
        if table.is_bits:
            for members in _coalesce(spans, max_bits_per_read, 16 * max_gap):
                requests.append(_bit_request(table, members))
        else:
            for members in _coalesce(spans, max_registers_per_read, max_gap):
                requests.append(_register_request(table, members, tags))

    scale = np.array([t.scale for t in tags], dtype=np.float64)
    offset = np.array([t.offset for t in tags], dtype=np.float64)
    offsets, words = [], 0
    for r in requests:
        offsets.append(-1 if r.table.is_bits else words)
        words += 0 if r.table.is_bits else r.count
    numeric, bits, strings = _merge_groups(requests, offsets)
    return ReadPlan(
        names=tuple(t.name for t in tags),
        requests=tuple(requests),
        scale=scale,
        offset=offset,
        needs_scaling=bool(np.any(scale != 1.0) or np.any(offset != 0.0)),
        word_offset=tuple(offsets),
        register_words=words,
        numeric=numeric,
        bits=bits,
        strings=strings,
    )
