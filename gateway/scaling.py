"""Inverse scaling, shared by the drivers: an engineering value to write -> the raw value of the tag's type.

A contract module (drivers import it, as they import ``gateway.driver`` and ``gateway.batch``): no I/O, no
engine. The write checks that need the engine (limits, writability, the source task) are in
:mod:`gateway.writes`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config.common import TagBase


class TagNotWritable(Exception):
    """Raised by a driver's ``write()`` for a tag its protocol cannot write (e.g. a Modbus input register)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any, limit: int = 80) -> str:
    """A scalar as ``repr`` cut to ``limit``; anything else by its kind (a nested list is never walked)."""
    if not isinstance(value, (bool, int, float, str)):
        return {dict: "an object", list: "a list", type(None): "null"}.get(type(value), f"a {type(value).__name__}")
    text = repr(value[: limit * 2] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: relative rounding error of the inverse scaling that is tolerated ((21.5 + 50) / 0.1 = 714.99999999999989)
RAW_TOLERANCE = 1e-9


def _scaled(tag: TagBase) -> bool:
    return tag.scale != 1.0 or tag.offset != 0.0


def raw_bool(tag: TagBase, value: Any, type_name: str) -> bool:
    """``true``/``false``, or a number whose raw value (after scale/offset) is 1 or 0."""
    if isinstance(value, bool):
        return value
    if _is_number(value) and (value - tag.offset) / tag.scale in (0, 1):
        return bool((value - tag.offset) / tag.scale)
    raise ValueError(f"tag {tag.name!r} is a {type_name}: write true or false (or 1 / 0), not {_show(value)}")


def raw_integer(tag: TagBase, value: Any, type_name: str, low: int, high: int) -> int:
    """``(value - offset) / scale`` as a whole number within ``low..high``; ``ValueError`` otherwise.

    Nothing is rounded silently: ``1.5`` to an integer, or ``21.53`` with ``scale: 0.1``, is refused. Exact for
    JSON integers when unscaled (also for decimal strings of 64-bit types, for clients whose numbers are doubles).
    """
    if isinstance(value, str) and high > (1 << 32):
        text = value.strip()
        if not text.lstrip("+-").isdigit():
            raise ValueError(f"tag {tag.name!r} is a {type_name}: {_show(value)} is not a whole decimal number")
        value = int(text)
    if not _is_number(value):
        raise ValueError(f"tag {tag.name!r} is a {type_name}: write a number, not {_show(value)}")
    if isinstance(value, int) and not _scaled(tag):
        raw: int | float = value
    else:
        if not math.isfinite(value):
            raise ValueError(f"tag {tag.name!r}: {value!r} is not a finite number")
        exact = (value - tag.offset) / tag.scale
        raw = round(exact)
        if abs(exact - raw) > RAW_TOLERANCE * max(1.0, abs(exact)):
            how = f" (raw value {exact:.6g} after scale {tag.scale:g}, offset {tag.offset:g})" if _scaled(tag) else ""
            raise ValueError(f"tag {tag.name!r} is a {type_name}: {value!r} is not a whole number{how}")
    if not low <= raw <= high:
        how = f" (raw value {raw} after scale {tag.scale:g}, offset {tag.offset:g})" if _scaled(tag) else ""
        raise ValueError(f"tag {tag.name!r}: {value!r} is outside the {type_name} range {low}..{high}{how}")
    return int(raw)


def raw_float(tag: TagBase, value: Any, type_name: str, max_abs: float) -> float:
    """``(value - offset) / scale`` as a finite float of magnitude at most ``max_abs``; ``ValueError`` otherwise."""
    if not _is_number(value):
        raise ValueError(f"tag {tag.name!r} is a {type_name}: write a number, not {_show(value)}")
    raw = (float(value) - tag.offset) / tag.scale
    if not math.isfinite(raw):
        raise ValueError(f"tag {tag.name!r}: {value!r} is not a finite number")
    if abs(raw) > max_abs:
        raise ValueError(f"tag {tag.name!r}: {value!r} is outside the {type_name} range +-{max_abs:.8g}")
    return raw


def engineering(tag: TagBase, raw: int | float) -> int | float:
    """``raw * scale + offset`` without the binary noise of scaling (71.5 - 50 gives 21.5, not 21.500000000000004);
    unscaled integers stay exact ``int``."""
    if not _scaled(tag):
        return raw
    return float(f"{raw * tag.scale + tag.offset:.15g}")
