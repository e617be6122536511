"""Codecs: how Python objects become the bytes a channel carries.

* ``"bytes"`` (default): anything with the buffer protocol goes out as-is (no
  copy here); ``recv`` returns ``bytes``. ``str`` is refused: encode it, or pick
  a codec, so text never changes encoding silently.
* ``"json"`` and ``"msgpack"``: via msgspec; safe for data from untrusted peers.
* ``"pickle"``: only when asked by name. Unpickling runs code chosen by the
  sender, so kipc never picks it for you on a named channel.

A codec is any object with ``encode(obj) -> bytes-like`` and
``decode(buffer) -> obj``; pass an instance to use your own.
"""

from __future__ import annotations

import pickle
from typing import Any, Protocol, runtime_checkable

import msgspec

from .errors import InvalidArgument

__all__ = ["BytesCodec", "Codec", "JsonCodec", "MsgpackCodec", "PickleCodec", "get_codec"]


@runtime_checkable
class Codec(Protocol):
    name: str

    def encode(self, obj: Any) -> bytes | bytearray | memoryview: ...

    def decode(self, data: bytes | memoryview) -> Any: ...


class BytesCodec:
    name = "bytes"

    def encode(self, obj: Any) -> bytes | bytearray | memoryview:
        if isinstance(obj, (bytes, bytearray)):
            return obj
        if isinstance(obj, str):
            raise TypeError("send bytes, not str (encode it, or open the channel with codec='json')")
        try:
            mv = memoryview(obj)
        except TypeError:
            raise TypeError(
                f"cannot send {type(obj).__name__}: the bytes codec takes a buffer "
                "(bytes, bytearray, memoryview, numpy array); pick codec='json'/'msgpack' for objects"
            ) from None
        if not mv.c_contiguous:
            return mv.tobytes()  # a strided view: one copy, in logical (C) order
        return mv.cast("B")

    def decode(self, data: bytes | memoryview) -> Any:
        return data


class JsonCodec:
    name = "json"

    def __init__(self) -> None:
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder()

    def encode(self, obj: Any) -> bytes:
        return self._enc.encode(obj)

    def decode(self, data: bytes | memoryview) -> Any:
        return self._dec.decode(data)


class MsgpackCodec:
    name = "msgpack"

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder()

    def encode(self, obj: Any) -> bytes:
        return self._enc.encode(obj)

    def decode(self, data: bytes | memoryview) -> Any:
        return self._dec.decode(data)


class PickleCodec:
    """Unpickling runs the sender's code: use only between processes you trust."""

    name = "pickle"

    def encode(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes | memoryview) -> Any:
        return pickle.loads(data)


_BY_NAME: dict[str, type] = {
    "bytes": BytesCodec,
    "json": JsonCodec,
    "msgpack": MsgpackCodec,
    "pickle": PickleCodec,
}

_DEFAULT = BytesCodec()


def get_codec(codec: str | Codec | None) -> Codec:
    """Resolve a codec name or instance. ``None`` -> bytes. Pickle only by name."""
    if codec is None:
        return _DEFAULT
    if isinstance(codec, str):
        try:
            cls = _BY_NAME[codec]
        except KeyError:
            raise InvalidArgument(f"unknown codec {codec!r}; choose one of {sorted(_BY_NAME)}") from None
        return _DEFAULT if cls is BytesCodec else cls()
    if isinstance(codec, Codec):
        return codec
    raise TypeError(f"codec must be a name or an object with encode/decode, not {type(codec).__name__}")
