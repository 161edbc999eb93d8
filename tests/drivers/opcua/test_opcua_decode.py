"""Decoding DataValues into Batch columns, for cases a live server does not readily produce."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from asyncua import ua

from drivers.opcua.decode import ERR_NULL_VALUE, fill
from gateway.batch import Batch, Quality

NOW_NS = 1_764_000_000_000_000_000
SERVER_TS = datetime(2025, 11, 25, 12, 0, 0, 500000, tzinfo=timezone.utc)
NOT_SET = datetime(1601, 1, 1, tzinfo=timezone.utc)


def as_int32(code: int) -> int:
    return int(np.uint32(code).view(np.int32))


def test_severity_bits_timestamps_and_positions() -> None:
    dvs = [
        ua.DataValue(ua.Variant(1.5, ua.VariantType.Double), SourceTimestamp=NOT_SET, ServerTimestamp=SERVER_TS),
        ua.DataValue(ua.Variant(2.0, ua.VariantType.Double), StatusCode=ua.StatusCode(0xC0000000)),
        ua.DataValue(ua.Variant(None, ua.VariantType.Null)),
        ua.DataValue(ua.Variant(3, ua.VariantType.Int32), StatusCode=ua.StatusCode(0x408F0400)),
    ]
    batch = Batch.empty(6, 0)
    fill(batch, np.array([5, 0, 3, 1]), dvs, NOW_NS)

    assert batch.values[5] == 1.5 and batch.ts[5] == int(SERVER_TS.timestamp()) * 10**9 + 500_000_000
    assert batch.quality[0] == Quality.BAD and np.isnan(batch.values[0]) and batch.ts[0] == NOW_NS
    assert batch.errors[0] == as_int32(0xC0000000)
    assert batch.quality[3] == Quality.BAD and batch.errors[3] == ERR_NULL_VALUE
    assert batch.quality[1] == Quality.UNCERTAIN and batch.values[1] == 3.0
    assert batch.error_text[as_int32(0x408F0400)] == "UncertainNoCommunicationLastUsableValue (0x408F0400)"
    assert np.isnan(batch.values[[2, 4]]).all()  # positions not in this response are left alone
    assert batch.strings == {}
