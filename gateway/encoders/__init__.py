"""Encoders: one module per payload format (:mod:`gateway.encoders.json` today), and compression.

An encoder owns everything about a data message's bytes: number formatting, the envelope, replay marking,
sample counting and compression. It is pure (no I/O): the publisher calls it to turn a
:class:`~gateway.reduce.Reduced` into a payload, and the delivery calls :meth:`Encoder.wire` at send time to
mark a replayed payload and compress it for the link in use (so a spooled message is stored uncompressed
once, and is compressed for whatever link replays it).

MQTT 3.1.1 has no content-type property, so a compressed payload is flagged in the topic:
``<ns>/<asset>/data`` carries plain JSON, ``<ns>/<asset>/data/zlib`` and ``<ns>/<asset>/data/zstd`` the
same JSON compressed (a zlib stream per RFC 1950; a zstd frame). :func:`decode` is the consumer side.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from gateway.reduce import Reduced

COMPRESSIONS = ("none", "zlib", "zstd")
ZLIB_LEVEL = 6
ZSTD_LEVEL = 3


class Encoder(Protocol):
    """What a publisher and a delivery need from a payload format."""

    def data(self, asset: str, seq: int, ts_ms: int, reduced: Reduced) -> bytes:
        """One asset's data message (``ts_ms``: the time the message is made, Unix ms)."""
        ...

    def wire(self, topic: str, payload: bytes, *, replay: bool, compression: str) -> tuple[str, bytes]:
        """Topic and bytes put on the wire for a stored payload: marked when replayed, compressed."""
        ...


def check_compression(name: str) -> None:
    """Raise ``ValueError`` when ``name`` is not a known compression."""
    if name not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")


_zstd_c: Any = None


def _zstd() -> Any:
    """The zstandard module, imported on first use (a gateway without zstd never loads it)."""
    import zstandard

    return zstandard


def compress(data: bytes, compression: str) -> bytes:
    """``data`` compressed with ``compression`` ("none" returns it unchanged)."""
    global _zstd_c
    if compression == "none":
        return data
    if compression == "zlib":
        return zlib.compress(data, ZLIB_LEVEL)
    if compression == "zstd":
        if _zstd_c is None:
            _zstd_c = _zstd().ZstdCompressor(level=ZSTD_LEVEL)
        return _zstd_c.compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def wire(topic: str, data: bytes, compression: str) -> tuple[str, bytes]:
    """Topic and payload of ``data`` on the wire: compressed payloads go to ``topic/zlib|zstd``."""
    if compression == "none":
        return topic, data
    return f"{topic}/{compression}", compress(data, compression)


def decompress(payload: bytes, topic: str) -> bytes:
    """Consumer side: the plain bytes of a payload received on ``topic`` (plain, ``/zlib`` or ``/zstd``)."""
    if topic.endswith("/zlib"):
        return zlib.decompress(payload)
    if topic.endswith("/zstd"):
        return _zstd().ZstdDecompressor().decompress(payload)
    return payload


def decode(payload: bytes, topic: str) -> Any:
    """Consumer side: the JSON message of a payload received on ``topic`` (plain, ``/zlib`` or ``/zstd``)."""
    return orjson.loads(decompress(payload, topic))


def make_encoder(fmt: str, **options: Any) -> Encoder:
    """The encoder of payload format ``fmt`` (``json``), with its options (e.g. ``shape``)."""
    if fmt == "json":
        from gateway.encoders.json import JsonEncoder

        return JsonEncoder(**options)
    raise ValueError(f"unknown payload format {fmt!r}")
