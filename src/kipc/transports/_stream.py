"""Framed channels over a byte-stream file descriptor (pipe, FIFO, Unix socket, TCP).

Contract (shared by every fd transport):

* Framing: ``frame`` (default; see :mod:`kipc._framing`), ``line`` (one message
  per ``\\n``-terminated line, for ``echo``/``cat``), ``raw`` (no boundaries:
  ``recv`` returns whatever bytes are available, ``send`` writes bytes as-is).
* fds are non-blocking and ``O_CLOEXEC``; waiting is ``poll`` with the
  remaining deadline (EINTR is retried by Python with the time left; Ctrl-C
  raises ``KeyboardInterrupt``).
* Back-pressure: a send waits until the peer has room. A message is *accepted*
  once its first byte is written; if the stream fills mid-message the rest is
  kept by this channel and written before the next message (the next ``send``
  first waits for it, and may time out without accepting its own message).
  Writes of frames up to ``PIPE_BUF`` (4096 B) to a pipe/FIFO are atomic, so
  a timed-out or non-blocking small send leaves the channel exactly unchanged.
* EOF at a frame boundary is :class:`ChannelClosed`; EOF inside a frame is
  :class:`ProtocolError`; a write to a stream whose reader has gone is
  :class:`PeerGone` (never SIGPIPE: sockets use ``MSG_NOSIGNAL`` and Python
  ignores SIGPIPE for pipes).
"""

from __future__ import annotations

import errno
import os
import select
from typing import Any, ClassVar

from .._base import Channel, Deadline
from .._framing import DEFAULT_MAX_FRAME, HEADER, HEADER_SIZE, FrameDecoder, check_max
from .._naming import validate_size
from ..codecs import Codec
from ..errors import ChannelClosed, InvalidArgument, PeerGone, ProtocolError, Timeout, from_oserror

__all__ = ["FRAMINGS", "StreamChannel", "wait_fd"]

FRAMINGS = ("frame", "line", "raw")
_READ_CHUNK = 256 * 1024
_DIRECT_READ = 256 * 1024  # payloads at least this big are read straight into their own buffer
_SMALL_WRITE = 64 * 1024  # below this, header and payload are joined into one write
_PACK = HEADER.pack
_UNPACK = HEADER.unpack_from


def wait_fd(fd: int, events: int, deadline: Deadline, what: str) -> None:
    """poll() one fd until ready or the deadline passes (raises Timeout/WouldBlock)."""
    if deadline.nonblocking:
        raise deadline.error(what)
    p = select.poll()
    p.register(fd, events)
    while True:
        ms = deadline.remaining_ms()
        if ms is not None and ms <= 0:
            raise deadline.error(what)
        if p.poll(ms):  # POLLHUP/POLLERR also return: the following read/write reports them
            return


class StreamChannel(Channel):
    """Base of every framed fd channel; subclasses open fds and call :meth:`_init_stream`."""

    scheme: ClassVar[str] = ""
    _rfd: int = -1
    _wfd: int = -1
    _eof: bool = False

    def _init_stream(self, url: str, rfd: int, wfd: int, *, codec: str | Codec | None = None,
                     framing: str = "frame", max_message_size: int | str = DEFAULT_MAX_FRAME) -> None:
        if framing not in FRAMINGS:
            raise InvalidArgument(f"{url}: framing {framing!r} is not one of {FRAMINGS}")
        if isinstance(max_message_size, str):
            max_message_size = validate_size(max_message_size, what="max_message_size")
        self.framing = framing
        self.max_message_size = self._decoder_max = check_max(max_message_size)
        self._rfd, self._wfd = rfd, wfd
        self.readable, self.writable = rfd >= 0, wfd >= 0
        for fd in {rfd, wfd} - {-1}:
            os.set_blocking(fd, False)
        self._decoder = FrameDecoder(self.max_message_size, where=url)
        self._big: bytearray | None = None  # payload being read directly (large frames)
        self._big_filled = 0
        self._lines = bytearray()
        self._pending: list[memoryview] = []  # unwritten tail of an accepted message
        self._init_channel(url, codec=codec)

    # -- low-level I/O hooks (sockets override) ------------------------------------
    def _write(self, data: memoryview | bytes) -> int:
        return os.write(self._wfd, data)

    def _writev(self, parts: list[Any]) -> int:
        return os.writev(self._wfd, parts)

    def _read(self, n: int) -> bytes:
        return os.read(self._rfd, n)

    def _readinto(self, buf: memoryview) -> int:
        return os.readv(self._rfd, [buf])

    def fileno(self) -> int:
        self._check_open("fileno")
        return self._rfd if self._rfd >= 0 else self._wfd

    def _readable_fd(self) -> int | None:
        return self._rfd if self._rfd >= 0 else None

    def _writable_fd(self) -> int | None:
        return self._wfd if self._wfd >= 0 else None

    def _close(self) -> None:
        for fd in {self._rfd, self._wfd} - {-1}:
            try:
                os.close(fd)
            except OSError:
                pass
        self._rfd = self._wfd = -1

    # -- fast paths ----------------------------------------------------------------
    # The common case (bytes in/out, blocking, framed) skips the generic template:
    # its per-call cost would otherwise be several times the syscall's for small
    # messages. Anything unusual (a timeout, knobs, a codec, a full pipe, an error,
    # a closed channel) falls through to Channel.send/recv, which check everything.
    def _send_fast(self, data: bytes, knobs: dict[str, Any]) -> bool:
        size = len(data)
        if self._pending or self.framing != "frame" or self._wfd < 0 or size >= _SMALL_WRITE:
            return False
        buf = _PACK(size) + data
        try:
            n = self._write(buf)
        except OSError:
            return False  # would block, or an error the general path reports properly
        if n == size + HEADER_SIZE:
            return True
        if n > 0:  # accepted, part of it written: the rest goes out like any pending tail
            self._pending = [memoryview(buf)[n:]]
            self._flush(Deadline(None))
            return True
        return False

    def _recv_fast(self, knobs: dict[str, Any]) -> bytes | None:
        if self.framing == "frame" and self._big is None and self._rfd >= 0:
            dec = self._decoder
            frame = dec.next_frame()  # a whole frame already buffered: no syscall at all
            if frame is not None:
                return frame
            if dec.missing() < _DIRECT_READ:
                # Blocking recv with nothing buffered: poll first (returns at once if bytes
                # or a hang-up are there) and read once; this skips a failed read + exception
                # in the request/reply case. Anything odd goes to the slow path.
                self._poller().poll()
                try:
                    chunk = self._read(_READ_CHUNK)
                except OSError:
                    chunk = b""  # the slow path waits again / reports it
                if chunk:
                    if dec.at_boundary and len(chunk) >= HEADER_SIZE:
                        # the usual case: the read returned exactly one whole frame
                        (n,) = _UNPACK(chunk)
                        if n + HEADER_SIZE == len(chunk) and n <= self._decoder_max:
                            return chunk[HEADER_SIZE:]
                    dec.feed(chunk)
                    return dec.next_frame()
        return None

    _poll_fd: int = -1

    def _poller(self) -> Any:
        """A poll object for POLLIN on the current read fd (a FIFO reader swaps fds)."""
        if self._poll_fd != self._rfd:
            self._poll = select.poll()
            self._poll.register(self._rfd, select.POLLIN)
            self._poll_fd = self._rfd
        return self._poll

    # -- sending -----------------------------------------------------------------
    def _oserror(self, e: OSError, op: str) -> Exception:
        if e.errno in (errno.EPIPE, errno.ECONNRESET):
            return PeerGone(f"{op} on {self.url}: the peer has gone ({e.strerror})", errno=e.errno)
        return from_oserror(e, self.url, op)

    def _flush(self, deadline: Deadline) -> None:
        """Write the pending tail of an accepted message (waits up to the deadline)."""
        pending = self._pending
        while pending:
            try:
                n = self._writev(pending) if len(pending) > 1 else self._write(pending[0])
            except BlockingIOError:
                wait_fd(self._wfd, select.POLLOUT, deadline, f"send on {self.url}")
                continue
            except OSError as e:
                raise self._oserror(e, "send") from e
            while n and pending:
                if n >= pending[0].nbytes:
                    n -= pending.pop(0).nbytes
                else:
                    pending[0] = pending[0][n:]
                    n = 0

    def _send(self, data: memoryview, deadline: Deadline, **knobs: Any) -> None:
        if self._pending:
            self._flush(deadline)
        size = data.nbytes
        framing = self.framing
        if framing == "frame":
            total = size + HEADER_SIZE
            if size < _SMALL_WRITE:
                parts: list[Any] = [HEADER.pack(size) + data]
            else:
                parts = [HEADER.pack(size), data]
        elif framing == "line":
            if b"\n" in data:
                raise InvalidArgument(f"send on {self.url}: framing=line messages cannot contain a newline")
            parts = [bytes(data) + b"\n"]
            total = size + 1
        else:
            parts = [data]
            total = size
        if total == 0:
            return
        while True:
            try:
                n = self._write(parts[0]) if len(parts) == 1 else self._writev(parts)
                break
            except BlockingIOError:
                wait_fd(self._wfd, select.POLLOUT, deadline, f"send on {self.url}")
            except OSError as e:
                raise self._oserror(e, "send") from e
        if n < total:
            # Accepted: a half-written frame cannot be taken back. Keep the tail,
            # push it out until the deadline, and leave the rest for the next send/close.
            tail: list[memoryview] = []
            for p in parts:
                v = memoryview(p)
                if n >= v.nbytes:
                    n -= v.nbytes
                    continue
                tail.append(v[n:])
                n = 0
            self._pending = tail
            try:
                self._flush(deadline)
            except Timeout:
                pass

    # -- receiving ---------------------------------------------------------------
    def _fill(self, deadline: Deadline, want: int) -> bytes:
        """Read some bytes (waiting up to the deadline). b'' means EOF."""
        while True:
            try:
                return self._read(max(want, _READ_CHUNK))
            except BlockingIOError:
                wait_fd(self._rfd, select.POLLIN, deadline, f"recv on {self.url}")
            except OSError as e:
                raise self._oserror(e, "recv") from e

    def _at_eof(self, mid: bool) -> None:
        self._eof = True
        if mid:
            self._decoder.eof()  # raises ProtocolError
            raise ProtocolError(f"{self.url}: stream ended inside a frame")
        raise ChannelClosed(f"recv on {self.url}: the peer closed the channel")

    def _recv(self, deadline: Deadline, **knobs: Any) -> bytes:
        if self.framing == "line":
            return self._recv_line(deadline)
        if self.framing == "raw":
            if self._eof:
                raise ChannelClosed(f"recv on {self.url}: the peer closed the channel")
            chunk = self._fill(deadline, _READ_CHUNK)
            if not chunk:
                self._at_eof(False)
            return chunk
        dec = self._decoder
        if self._big is not None:
            return self._recv_big(deadline)
        while True:
            frame = dec.next_frame()
            if frame is not None:
                return frame
            if self._eof:
                self._at_eof(not dec.at_boundary)
            missing = dec.missing()
            if missing >= _DIRECT_READ and dec.buffered >= HEADER_SIZE:
                self._start_big()
                return self._recv_big(deadline)
            chunk = self._fill(deadline, missing)
            if not chunk:
                self._at_eof(not dec.at_boundary)
            dec.feed(chunk)

    def _start_big(self) -> None:
        dec = self._decoder
        buffered = dec.take()
        (n,) = HEADER.unpack_from(buffered)
        self._big = bytearray(n)
        have = len(buffered) - HEADER_SIZE
        self._big[:have] = memoryview(buffered)[HEADER_SIZE:]
        self._big_filled = have

    def _recv_big(self, deadline: Deadline) -> bytes:
        big = self._big
        assert big is not None
        view = memoryview(big)
        while self._big_filled < len(big):
            try:
                n = self._readinto(view[self._big_filled :])
            except BlockingIOError:
                wait_fd(self._rfd, select.POLLIN, deadline, f"recv on {self.url}")
                continue
            except OSError as e:
                raise self._oserror(e, "recv") from e
            if n == 0:
                self._eof = True
                raise ProtocolError(
                    f"{self.url}: stream ended inside a frame ({self._big_filled} of {len(big)} payload bytes)")
            self._big_filled += n
        view.release()
        self._big = None
        return bytes(big)

    def _recv_line(self, deadline: Deadline) -> bytes:
        buf = self._lines
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                line = bytes(buf[:i])
                del buf[: i + 1]
                return line
            if len(buf) > self._decoder_max:
                raise ProtocolError(f"{self.url}: line longer than {self._decoder_max} bytes")
            if self._eof:
                if buf:  # a last line without newline is still a line
                    line = bytes(buf)
                    buf.clear()
                    return line
                raise ChannelClosed(f"recv on {self.url}: the peer closed the channel")
            chunk = self._fill(deadline, _READ_CHUNK)
            if not chunk:
                self._eof = True
                continue
            buf += chunk

    def close(self) -> None:
        # A pending tail belongs to an accepted message: deliver it before closing.
        if not self._closed and self._pending:
            try:
                self._flush(Deadline(None))
            except (PeerGone, ChannelClosed):
                pass
        super().close()
