"""Length-prefixed framing for byte streams (pipe, FIFO, Unix socket, TCP). No I/O here.

Byte layout (so a C program can speak it)::

    +----------------------------+---------------------+
    | length: uint32 little-end. | payload: length B   |
    +----------------------------+---------------------+

    /* C sender */  uint32_t n = htole32(len); write(fd, &n, 4); write(fd, buf, len);

* A frame of length 0 is a valid, empty message.
* The receiver knows a maximum (``max_size``, default 1 GiB, at most
  2**32 - 2). A length above it is rejected with :class:`ProtocolError`
  *before* any allocation, so a forged prefix (0xFFFFFFFF, or the first 4
  bytes of a forged 8-byte 2**64-1) costs nothing.
* End of stream exactly at a frame boundary is a clean close
  (:class:`ChannelClosed`); end of stream inside a frame is
  :class:`ProtocolError` ("truncated").

The decoder is fed bytes (``feed``) or asked for a buffer to read into
(``read_buffer``), and hands back whole payloads (``next_frame``).
"""

from __future__ import annotations

import struct

from .errors import InvalidArgument, MessageTooLarge, ProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "HEADER", "HEADER_SIZE", "MAX_FRAME", "FrameDecoder", "encode_header"]

HEADER = struct.Struct("<I")
HEADER_SIZE = HEADER.size
MAX_FRAME = 2**32 - 2
DEFAULT_MAX_FRAME = 2**30


def check_max(max_size: int) -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError("max_message_size must be int")
    if not 0 <= max_size <= MAX_FRAME:
        raise InvalidArgument(f"max_message_size {max_size} is outside 0..{MAX_FRAME}")
    return max_size


def encode_header(size: int, max_size: int = MAX_FRAME) -> bytes:
    """The 4-byte prefix for a payload of ``size`` bytes."""
    if size > max_size:
        raise MessageTooLarge(f"message of {size} bytes exceeds the frame limit of {max_size} bytes",
                              size=size, limit=max_size)
    return HEADER.pack(size)


class FrameDecoder:
    """Reassemble frames from arbitrary chunks of a byte stream."""

    __slots__ = ("_buf", "_max", "_need", "_where")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME, *, where: str = "stream") -> None:
        self._buf = bytearray()
        self._max = check_max(max_size)
        self._need = -1  # payload length of the frame being assembled, -1 = header not read yet
        self._where = where

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered."""
        return not self._buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def _parse_header(self) -> None:
        (n,) = HEADER.unpack_from(self._buf)
        if n > self._max:
            raise ProtocolError(
                f"{self._where}: frame length {n} exceeds the limit {self._max}; "
                "forged or corrupt length prefix (stream is not usable)"
            )
        self._need = n

    def missing(self) -> int:
        """Bytes still needed before the current frame is complete (>= 1 when incomplete)."""
        if self._need < 0:
            if len(self._buf) < HEADER_SIZE:
                return HEADER_SIZE - len(self._buf)
            self._parse_header()
        return max(0, HEADER_SIZE + self._need - len(self._buf))

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None if more bytes are needed."""
        buf = self._buf
        if self._need < 0:
            if len(buf) < HEADER_SIZE:
                return None
            self._parse_header()
        end = HEADER_SIZE + self._need
        if len(buf) < end:
            return None
        if len(buf) == end:
            frame = bytes(memoryview(buf)[HEADER_SIZE:])
            buf.clear()
        else:
            frame = bytes(memoryview(buf)[HEADER_SIZE:end])
            del buf[:end]  # bytearray deletes from the front in O(1)
        self._need = -1
        return frame

    def next_frame_ready(self) -> bool:
        """True if a whole frame is buffered (a probe: parses nothing, raises nothing)."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return False
        need = self._need if self._need >= 0 else HEADER.unpack_from(buf)[0]
        return len(buf) >= HEADER_SIZE + need

    def take(self) -> bytearray:
        """Hand over the buffered bytes (header included) and reset; for direct reads of big frames."""
        buf, self._buf, self._need = self._buf, bytearray(), -1
        return buf

    def eof(self) -> None:
        """The stream ended: raise ProtocolError if it ended inside a frame."""
        if self._buf:
            raise ProtocolError(
                f"{self._where}: stream ended inside a frame ({len(self._buf)} bytes of a "
                f"{'header' if self._need < 0 else f'{HEADER_SIZE + self._need}-byte frame'} received)"
            )
