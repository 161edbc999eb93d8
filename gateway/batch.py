"""The unit of data a driver hands to the engine: arrays, never one Python object per sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Quality(IntEnum):
    """OPC UA-style quality, stored as uint8 in batches and ring buffers."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


QUALITY_NAMES = np.array(["good", "uncertain", "bad"], dtype=object)


@dataclass(slots=True)
class Batch:
    """Values of some or all tags of one source.

    ``ts``, ``values``, ``quality`` and ``errors`` have one element per entry of ``index``
    (the positions of the tags in the source's plan). ``index`` is ``None`` when the batch
    holds every tag of the plan in plan order, which is what a poll returns.

    - ``ts``: int64, Unix epoch nanoseconds (UTC) when the value was sampled.
    - ``values``: float64, engineering value (scale/offset applied); NaN where bad.
    - ``quality``: uint8, a :class:`Quality`.
    - ``errors``: int32 driver error code where bad (0 where good); see ``error_text``.
    - ``error_text``: code -> human text, e.g. ``{2: "Modbus exception 2 (illegal data address)"}``.
    - ``strings``: plan position -> text, for string tags (kept as last value only).
    """

    ts: np.ndarray
    values: np.ndarray
    quality: np.ndarray
    errors: np.ndarray
    index: np.ndarray | None = None
    error_text: dict[int, str] = field(default_factory=dict)
    strings: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def empty(cls, n: int, ts_ns: int) -> "Batch":
        """A full batch of ``n`` tags, all good, values NaN, stamped ``ts_ns``; drivers fill it in."""
        return cls(
            ts=np.full(n, ts_ns, dtype=np.int64),
            values=np.full(n, np.nan, dtype=np.float64),
            quality=np.zeros(n, dtype=np.uint8),
            errors=np.zeros(n, dtype=np.int32),
        )

    @classmethod
    def all_bad(cls, n: int, ts_ns: int, code: int, text: str) -> "Batch":
        """Every tag bad with one error: what the engine records when a device goes away."""
        b = cls.empty(n, ts_ns)
        b.quality[:] = Quality.BAD
        b.errors[:] = code
        b.error_text[code] = text
        return b

    def mark_bad(self, positions: np.ndarray | slice | list[int], code: int, text: str) -> None:
        """Mark some entries bad (value NaN) with one error code, leaving the rest of the batch standing."""
        self.values[positions] = np.nan
        self.quality[positions] = Quality.BAD
        self.errors[positions] = code
        self.error_text[code] = text
