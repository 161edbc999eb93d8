"""Framing, checksums and parsing of instrument lines, without I/O."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial_line.checksum import (
    ChecksumError,
    crc16_ccitt,
    crc16_modbus,
    lrc,
    split_checked,
    sum8,
    xor8,
)
from drivers.serial_line.config import (
    ChecksumConfig,
    SerialLineSource,
    SerialLineTag,
    control_bytes,
)
from drivers.serial_line.framing import LineCounters, LineFramer
from drivers.serial_line.parse import (
    ERR_CHECKSUM,
    ERR_NO_MATCH,
    ERR_VALUE,
    LineParser,
    LineRejected,
)
from gateway.batch import Quality


def test_checksums_match_published_check_values() -> None:
    data = b"123456789"
    assert crc16_modbus(data) == 0x4B37  # CRC-16/MODBUS check value
    assert crc16_ccitt(data) == 0x29B1  # CRC-16/CCITT-FALSE check value
    # NMEA sentence from the NMEA 0183 examples: $GPGLL,...*hh, xor of the bytes between $ and *
    assert xor8(b"GPGLL,4916.45,N,12311.12,W,225444,A") == 0x31
    # Modbus ASCII ":010300000001FA": LRC over the binary bytes 01 03 00 00 00 01
    assert lrc(bytes([1, 3, 0, 0, 0, 1])) == 0xFB
    assert sum8(b"\xff\x02") == 0x01


def test_nmea_style_checksum_is_checked_and_removed() -> None:
    cfg = ChecksumConfig(kind="xor8", separator="*", skip=1)
    line = b"$GPGLL,4916.45,N,12311.12,W,225444,A*31"
    assert split_checked(line, cfg) == b"$GPGLL,4916.45,N,12311.12,W,225444,A"
    assert split_checked(line.lower(), ChecksumConfig(kind="xor8", separator="*", skip=1)) != b""  # hex any case
    for bad in (b"$GPGLL,4916.45,N,12311.12,W,225444,B*31", b"$GPGLL,4916.45*3", b"$GPGLL,4916.45,N#31", b"*zz"):
        with pytest.raises(ChecksumError):
            split_checked(bad, cfg)


def test_crc16_without_separator_covers_the_whole_data() -> None:
    cfg = ChecksumConfig(kind="crc16_modbus")
    assert split_checked(b"123456789" + b"4B37", cfg) == b"123456789"
    with pytest.raises(ChecksumError, match="mismatch"):
        split_checked(b"123456780" + b"4B37", cfg)


def _lines_of(chunks: list[bytes], max_line: int = 32) -> tuple[list[bytes], LineCounters]:
    counters = LineCounters()
    framer = LineFramer(b"\r\n", max_line, counters)
    out: list[bytes] = []
    for c in chunks:
        out += framer.feed(c)
    return out, counters


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_framer_gives_the_same_lines_however_the_bytes_are_chunked(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\r\n" for line in lines)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    got, counters = _lines_of(chunks)
    assert got == [line for line in lines if len(line) <= 32]
    assert counters.overlong == sum(len(line) > 32 for line in lines)
    assert counters.bytes_in == len(stream)


def test_overlong_garbage_is_skipped_up_to_the_next_terminator_and_memory_stays_bounded() -> None:
    counters = LineCounters()
    framer = LineFramer(b"\r\n", 16, counters)
    assert framer.feed(b"A" * 10_000) == []
    assert framer.pending == 0 and counters.overlong == 1
    assert framer.feed(b"B" * 10_000 + b"\r\nok\r\n") == [b"ok"]
    assert counters.overlong == 1  # one overlong line, however long
    assert framer.feed(b"half") == [] and framer.pending == 4
    assert framer.drop_partial() == 4 and counters.partial == 1
    assert framer.feed(b"next\r\n") == [b"next"]


def _parser(pattern: str, tags: list[dict], **source) -> LineParser:
    src = SerialLineSource(driver="serial_line", port="/dev/null", command="P", pattern=pattern, **source)
    return LineParser(src, [SerialLineTag(**t) for t in tags])


def test_groups_become_typed_values_with_scale_and_offset() -> None:
    p = _parser(
        r"(?P<st>ST|US),(?P<w>[-+ ]\d+[.,]\d+),(?P<n>[-+]?\d+),(?P<id>\w+)",
        [
            {"name": "w", "scale": 1000, "offset": -5},
            {"name": "w_comma", "group": "w", "decimal_comma": True},
            {"name": "n", "type": "int", "scale": 0.5},
            {"name": "stable", "group": "st", "type": "bool", "true_values": ["st"], "false_values": ["US"]},
            {"name": "id", "type": "string"},
        ],
    )
    parsed = p.parse(b"ST,-0012.345,+42,AB12", 7)
    b = parsed.batch
    np.testing.assert_allclose(b.values[:4], [-12345.0 - 5, -12.345, 21.0, 1.0])
    assert np.isnan(b.values[4]) and b.strings == {4: "AB12"}
    assert b.quality.tolist() == [Quality.GOOD] * 5 and b.ts.tolist() == [7] * 5
    comma = p.parse(b"US,+0001,500,42,X", 8).batch  # '.' tag cannot read '1,500'; the ',' one can
    assert comma.quality[0] == Quality.BAD and comma.errors[0] == ERR_VALUE and np.isnan(comma.values[0])
    assert comma.values[1] == 1.5 and comma.values[3] == 0.0


@pytest.mark.parametrize("line", [b"ST,12.3", b"xST,12.3", b"ST,12.3 ", b"ST,12.3ST,12.3", b""])
def test_the_pattern_must_match_the_whole_line(line: bytes) -> None:
    p = _parser(r"ST,(?P<w>\d+\.\d+)", [{"name": "w"}])
    if line == b"ST,12.3":
        assert p.parse(line, 0).batch.values[0] == 12.3
    else:
        with pytest.raises(LineRejected) as e:
            p.parse(line, 0)
        assert e.value.code == ERR_NO_MATCH


def test_non_finite_numbers_and_unknown_bool_texts_are_bad_not_published() -> None:
    p = _parser(r"(?P<v>\S+) (?P<b>\S+)", [{"name": "v"}, {"name": "b", "type": "bool"}])
    b = p.parse(b"nan maybe", 0).batch
    assert b.quality.tolist() == [Quality.BAD, Quality.BAD]
    b = p.parse(b"1e3 ON", 0).batch
    assert b.values.tolist() == [1000.0, 1.0]


def test_a_checksum_failure_rejects_the_line() -> None:
    p = _parser(r"W(?P<w>\d+)", [{"name": "w"}], checksum={"kind": "sum8", "separator": ";"})
    good = b"W12;" + f"{sum(b'W12') & 0xFF:02x}".encode()
    assert p.parse(good, 0).batch.values[0] == 12
    with pytest.raises(LineRejected) as e:
        p.parse(b"W13;" + good[-2:], 0)
    assert e.value.code == ERR_CHECKSUM and e.value.counter == "checksum"


@pytest.mark.parametrize(
    ("written", "wire"),
    [("P\r\n", b"P\r\n"), ("P\\r\\n", b"P\r\n"), ("\\x02Q\\x03", b"\x02Q\x03"), ("a\\\\b", b"a\\b")],
)
def test_control_strings_accept_real_characters_and_escapes(written: str, wire: bytes) -> None:
    assert control_bytes(written) == wire
