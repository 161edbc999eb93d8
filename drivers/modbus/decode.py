"""Vectorised decoding of Modbus responses into a :class:`gateway.batch.Batch`, driven by a compiled plan.

A poll's register responses are copied into one buffer and decoded together by :func:`decode_poll`: one
NumPy gather per (type, byte order) group per poll, whatever the number of requests — never a Python
loop per register or per numeric tag. Strings are the exception (one Python ``str`` per string tag is
unavoidable). :func:`decode_registers` decodes a single response with the same rules.

Conventions a user relies on:

- Byte orders name where the bytes of the big-endian value ``A B C D`` (``A`` most significant) sit in
  consecutive registers: ABCD big endian; CDAB words reversed, bytes in each word big endian (for 64-bit
  values all four words reversed: ``GH EF CD AB``); BADC bytes swapped in each word; DCBA fully little endian.
- ``int64``/``uint64`` become float64, exact only up to 2**53 (9,007,199,254,740,992) in magnitude;
  larger values are rounded to the nearest representable float.
- A ``float32``/``float64`` register value that is NaN is delivered as NaN with quality *uncertain* and
  error code :data:`NAN_VALUE`: the read succeeded, but the device said "not a number" (many PLCs use it
  for a sensor fault). Infinities are passed through as good values.
- Strings: ASCII, two characters per register, high byte first (``BADC``: low byte first), cut at the
  first NUL and stripped of trailing spaces; non-ASCII bytes become U+FFFD.
- ``bit`` tags: ``(register >> bit) & 1`` with bit 0 the least significant. ``bool`` tags: the coil or
  discrete input, 1.0 or 0.0.
- ``value = raw * scale + offset`` for every tag, applied once over the whole batch.
"""

from __future__ import annotations

import numpy as np

from drivers.modbus.plan import ReadPlan, ReadRequest
from gateway.batch import Batch, Quality

#: Error code (``Batch.errors``) of a float register holding NaN; quality is uncertain.
NAN_VALUE = 1000
NAN_TEXT = "device sent NaN (not a number)"


def _layout(swap_bytes: bool) -> str:
    return "<u2" if swap_bytes else ">u2"


def decode_registers(request: ReadRequest, registers: np.ndarray, batch: Batch) -> None:
    """Decode one register response (uint16 array of ``request.count`` words) into ``batch``."""
    _decode_groups(request, registers, batch)


def decode_poll(plan: ReadPlan, registers: np.ndarray, batch: Batch) -> None:
    """Decode every register response of a poll at once into ``batch``.

    ``registers`` is the poll buffer: uint16, ``plan.register_words`` long, request ``i``'s words at
    ``plan.word_offset[i]``. Tags of requests that failed are decoded from whatever their words hold;
    the caller marks them bad afterwards.
    """
    _decode_groups(plan, registers, batch)


def _decode_groups(where: ReadRequest | ReadPlan, registers: np.ndarray, batch: Batch) -> None:
    for g in where.numeric:
        raw = registers[g.words].astype(_layout(g.swap_bytes))
        values = raw.view(g.dtype)[:, 0]
        batch.values[g.positions] = values
        if g.is_float:
            nan = np.isnan(values)
            if nan.any():
                odd = g.positions[nan]
                batch.quality[odd] = Quality.UNCERTAIN
                batch.errors[odd] = NAN_VALUE
                batch.error_text[NAN_VALUE] = NAN_TEXT
    for b in where.bits:
        batch.values[b.positions] = (registers[b.words] >> b.shifts) & 1
    for s in where.strings:
        raw = registers[s.words].astype(_layout(s.swap_bytes)).tobytes()
        width = s.words.shape[1] * 2
        for i, pos in enumerate(s.positions.tolist()):
            chunk = raw[i * width : (i + 1) * width]
            batch.strings[pos] = chunk.split(b"\x00", 1)[0].decode("ascii", errors="replace").rstrip(" ")


def decode_bits(request: ReadRequest, bits: np.ndarray, batch: Batch) -> None:
    """Decode one coil / discrete-input response (bool array, at least ``request.count`` long) into ``batch``."""
    batch.values[request.bit_positions] = bits[request.bit_index]


def apply_scaling(plan: ReadPlan, batch: Batch) -> None:
    """``values = values * scale + offset`` over the whole batch (a no-op when no tag is scaled)."""
    if plan.needs_scaling:
        np.multiply(batch.values, plan.scale, out=batch.values)
        np.add(batch.values, plan.offset, out=batch.values)
