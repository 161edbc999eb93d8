"""Line checksums of ASCII instruments: xor8, sum8, lrc, crc16_modbus, crc16_ccitt, written as hex text.

:func:`split_checked` verifies the checksum at the end of a line and returns the data part, or raises
:class:`ChecksumError`. xor8 reduces with NumPy and sum8/lrc use ``sum()`` over bytes (C speed);
crc16_ccitt is :func:`binascii.crc_hqx`; crc16_modbus is a table-driven loop (lines are short).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable

import numpy as np

from drivers.modbus.rtu_frame import crc16
from drivers.serial_line.config import ChecksumConfig


class ChecksumError(ValueError):
    """The line's checksum is missing, not hex, or does not match the data."""


def xor8(data: bytes) -> int:
    return int(np.bitwise_xor.reduce(np.frombuffer(data, dtype=np.uint8))) if data else 0


def sum8(data: bytes) -> int:
    return sum(data) & 0xFF


def lrc(data: bytes) -> int:
    """Modbus ASCII LRC: the two's complement of the 8-bit sum."""
    return -sum(data) & 0xFF


#: CRC-16/MODBUS (reflected poly 0xA001, init 0xFFFF): the same CRC the Modbus RTU framing uses
crc16_modbus = crc16


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected."""
    return binascii.crc_hqx(data, 0xFFFF)


FUNCTIONS: dict[str, Callable[[bytes], int]] = {
    "xor8": xor8,
    "sum8": sum8,
    "lrc": lrc,
    "crc16_modbus": crc16_modbus,
    "crc16_ccitt": crc16_ccitt,
}


def split_checked(line: bytes, cfg: ChecksumConfig) -> bytes:
    """The data part of ``line`` (separator and checksum removed) when its checksum is right."""
    width = cfg.width
    sep = cfg.separator.encode("latin-1")
    if len(line) < width + len(sep) + cfg.skip:
        raise ChecksumError("line too short to hold its checksum")
    text, data_end = line[-width:], len(line) - width
    if sep:
        if line[data_end - len(sep) : data_end] != sep:
            raise ChecksumError(f"checksum separator {cfg.separator!r} missing")
        data_end -= len(sep)
    try:
        got = int(text, 16)
    except ValueError:
        raise ChecksumError("checksum is not hex digits") from None
    if not text.isalnum():  # int() accepts '+f', ' f', '0_f'
        raise ChecksumError("checksum is not hex digits")
    covered = line[cfg.skip : data_end + (len(sep) if cfg.covers_separator else 0)]
    want = FUNCTIONS[cfg.kind](covered)
    if got != want:
        raise ChecksumError(f"checksum mismatch (line says {got:0{width}X}, data gives {want:0{width}X})")
    return line[:data_end]
