"""Encoders: a data message (a dict of one asset's reduced tags) -> the bytes put on the wire.

Pure functions, no I/O: the publisher (and the spool) call :func:`encode` and get the payload plus the
topic suffix that tells consumers how to read it. MQTT 3.1.1 has no content-type property, so a compressed
payload is flagged in the topic: ``<ns>/<asset>/data`` carries plain JSON, ``<ns>/<asset>/data/zlib`` and
``<ns>/<asset>/data/zstd`` carry the same JSON compressed (zlib stream per RFC 1950; a zstd frame).
:func:`decode` is the consumer side.

JSON is written by ``orjson`` when it is installed (several times faster on our messages), else by the
standard library; both give the same compact text.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

try:  # optional speed-up; same output as the stdlib encoder
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the installation
    _orjson = None

try:  # optional: zstd has no stdlib module before Python 3.14
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the installation
    _zstd = None

COMPRESSIONS = ("none", "zlib", "zstd")
ZLIB_LEVEL = 6
ZSTD_LEVEL = 3
JSON_ENCODER = "orjson" if _orjson is not None else "json"


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded message: ``payload`` goes to topic ``base + topic_suffix``."""

    payload: bytes
    topic_suffix: str  # "" | "/zlib" | "/zstd"


def check_compression(name: str) -> None:
    """Raise ``ValueError`` with what to install when ``name`` cannot be used on this machine."""
    if name not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    if name == "zstd" and _zstd is None:
        raise ValueError("zstd compression needs the 'zstandard' package (pip install zstandard); or use zlib")


def zstd_available() -> bool:
    return _zstd is not None


if _orjson is not None:
    _OPTS = _orjson.OPT_SERIALIZE_NUMPY

    def encode_json(msg: dict[str, Any]) -> bytes:
        """Compact JSON (no spaces); values were made JSON-safe by the reducer (NaN -> null)."""
        return _orjson.dumps(msg, option=_OPTS)

else:  # pragma: no cover - depends on the installation

    def encode_json(msg: dict[str, Any]) -> bytes:
        """Compact JSON (no spaces); values were made JSON-safe by the reducer (no NaN)."""
        return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()


def encode_json_stdlib(msg: dict[str, Any]) -> bytes:
    """The standard library's encoder, always (for comparison in ``iiot-gateway bench``)."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()


_zstd_c = None


def compress(data: bytes, compression: str) -> bytes:
    """``data`` compressed with ``compression`` ("none" returns it unchanged)."""
    global _zstd_c
    if compression == "none":
        return data
    if compression == "zlib":
        return zlib.compress(data, ZLIB_LEVEL)
    if compression == "zstd":
        check_compression("zstd")
        if _zstd_c is None:
            _zstd_c = _zstd.ZstdCompressor(level=ZSTD_LEVEL)
        return _zstd_c.compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def wire(topic: str, data: bytes, compression: str) -> tuple[str, bytes]:
    """Topic and payload of JSON ``data`` on the wire: compressed payloads go to ``topic/zlib|zstd``."""
    if compression == "none":
        return topic, data
    return f"{topic}/{compression}", compress(data, compression)


def encode(msg: dict[str, Any], compression: str = "none") -> Encoded:
    """Encode one data message as JSON, compressed as configured (``mqtt.compression``)."""
    _, payload = wire("", encode_json(msg), compression)
    return Encoded(payload, "" if compression == "none" else "/" + compression)


def decode(payload: bytes, topic: str) -> Any:
    """Consumer side: the JSON message of a payload received on ``topic`` (plain, ``/zlib`` or ``/zstd``)."""
    if topic.endswith("/zlib"):
        payload = zlib.decompress(payload)
    elif topic.endswith("/zstd"):
        check_compression("zstd")
        payload = _zstd.ZstdDecompressor().decompress(payload)
    return json.loads(payload)
