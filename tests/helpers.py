"""Payloads that detect corruption: every message carries (producer, seq, length, crc32)."""

from __future__ import annotations

import struct
import zlib

_HDR = struct.Struct("<IQII")  # producer, seq, length, crc32 of the filler


def payload(producer: int, seq: int, size: int) -> bytes:
    """A message of exactly ``size`` bytes (>= 20) that names its producer and sequence."""
    if size < _HDR.size:
        return bytes((seq + i) & 0xFF for i in range(size))
    filler = bytes((seq * 7 + i) & 0xFF for i in range(min(size - _HDR.size, 256)))
    body = (filler * ((size - _HDR.size) // max(1, len(filler)) + 1))[: size - _HDR.size]
    return _HDR.pack(producer, seq, size, zlib.crc32(body)) + body


def check(data: bytes, producer: int | None = None, seq: int | None = None) -> tuple[int, int]:
    """Verify a payload from :func:`payload`; return (producer, seq)."""
    p, s, n, crc = _HDR.unpack_from(data)
    assert n == len(data), f"length field {n} != {len(data)}"
    assert zlib.crc32(data[_HDR.size :]) == crc, f"crc mismatch in message {p}/{s}"
    if producer is not None:
        assert p == producer
    if seq is not None:
        assert s == seq, f"expected seq {seq}, got {s}"
    return p, s
