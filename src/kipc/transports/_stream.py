"""Framed channels over a byte-stream file descriptor (pipe, FIFO, Unix socket, TCP).

Contract (shared by every fd transport):

* Framing: ``frame`` (default; see :mod:`kipc._framing`), ``line`` (one message
  per ``\\n``-terminated line, for ``echo``/``cat``), ``raw`` (no boundaries:
  ``recv`` returns whatever bytes are available, ``send`` writes bytes as-is).
* fds are non-blocking and ``O_CLOEXEC``; waiting is ``poll`` on the fd and the
  channel's wake fd with the remaining deadline (EINTR is retried by Python
  with the time left; Ctrl-C raises ``KeyboardInterrupt``; ``close()`` from
  another thread wakes the poll).
* Threads: each direction is serialised by the template's lock; the decoder
  state belongs to the channel, so a frame half-read by one thread is finished
  by whichever thread reads next, and it is returned once.
* Back-pressure: a send waits until the peer has room. A message is *accepted*
  once its first byte is written; if the stream fills mid-message the rest is
  kept by this channel and written before the next message (the next ``send``
  first waits for it, and may time out without accepting its own message).
  Writes of frames up to ``PIPE_BUF`` (4096 B) to a pipe/FIFO are atomic, so
  a timed-out or non-blocking small send leaves the channel exactly unchanged.
* Big frames (>= 256 KiB) are read straight into the ``bytes`` object ``recv``
  returns (C, ``native("_bytes")``: no second copy), which starts at 1 MiB
  and doubles only as payload arrives: a forged length prefix followed by
  silence costs at most 1 MiB of address space, not the announced size.
* ``close()`` writes an accepted message's unwritten tail for at most
  ``linger=`` seconds (option of every fd channel; default ``LINGER``, 2 s;
  ``0`` cuts at once; ``None`` is refused: close never blocks unbounded);
  after that the peer sees the frame cut short (:class:`ProtocolError`),
  never a hang of ours.
* EOF at a frame boundary is :class:`ChannelClosed`; EOF inside a frame is
  :class:`ProtocolError`; a write to a stream whose reader has gone is
  :class:`PeerGone` (never SIGPIPE: sockets use ``MSG_NOSIGNAL`` and Python
  ignores SIGPIPE for pipes).
"""

from __future__ import annotations

import errno
import math
import os
import select
import time
from typing import Any, ClassVar

from .._base import Channel, Deadline, other_threads
from .._framing import DEFAULT_MAX_FRAME, HEADER, HEADER_SIZE, FrameDecoder, check_max
from .._naming import parse_seconds, validate_size
from .._platform import native
from ..codecs import Codec
from ..errors import ChannelClosed, InvalidArgument, PeerGone, ProtocolError, from_oserror

__all__ = ["FRAMINGS", "LINGER", "StreamChannel", "check_linger", "wait_fd"]

FRAMINGS = ("frame", "line", "raw")
#: seconds close() spends writing an accepted message's tail
LINGER = 2.0
_READ_CHUNK = 256 * 1024
_DIRECT_READ = 256 * 1024  # payloads at least this big are read straight into their own buffer
_SMALL_WRITE = 64 * 1024  # below this, header and payload are joined into one write
_ATOMIC_MAX = 64 * 1024  # timed sends up to this size wait for room for the whole frame (TCP)
_ROOM_MARGIN = 8192  # header + skb overhead
_PACK = HEADER.pack
_UNPACK = HEADER.unpack_from
_INF = math.inf
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_Filler = native("_bytes").Filler


def wait_fd(fd: int, events: int, deadline: Deadline, what: str) -> None:
    """poll() one fd until ready or the deadline passes (raises Timeout/WouldBlock).

    For waits outside a channel's calls (connect, handshakes, opening a FIFO).
    """
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


def check_linger(value: object, url: str) -> float:
    """``linger=``: the seconds close() may spend writing an unfinished message (0 = cut it at once)."""
    t = parse_seconds(value, what="linger")
    if t is None:
        raise InvalidArgument(f"{url}: linger=None would let close() block forever; give seconds (default {LINGER:g})")
    return t


class StreamChannel(Channel):
    """Base of every framed fd channel; subclasses open fds and call :meth:`_init_stream`."""

    scheme: ClassVar[str] = ""
    _rfd: int = -1
    _wfd: int = -1
    _eof: bool = False
    linger: float = LINGER

    def _init_stream(self, url: str, rfd: int, wfd: int, *, codec: str | Codec | None = None,
                     framing: str = "frame", max_message_size: int | str = DEFAULT_MAX_FRAME,
                     linger: float | str = LINGER) -> None:
        if framing not in FRAMINGS:
            raise InvalidArgument(f"{url}: framing {framing!r} is not one of {FRAMINGS}")
        if isinstance(max_message_size, str):
            max_message_size = validate_size(max_message_size, what="max_message_size")
        self.framing = framing
        self.linger = check_linger(linger, url)
        self.max_message_size = self._decoder_max = check_max(max_message_size)
        self._rfd, self._wfd = rfd, wfd
        self.readable, self.writable = rfd >= 0, wfd >= 0
        for fd in {rfd, wfd} - {-1}:
            os.set_blocking(fd, False)
        self._decoder = FrameDecoder(self.max_message_size, where=url)
        self._big: Any = None  # a _bytes.Filler: the payload of a large frame, read directly
        self._lines = bytearray()
        self._pending: list[memoryview] = []  # unwritten tail of an accepted message
        self._polls: dict[str, tuple[int, Any]] = {}
        self._init_channel(url, codec=codec)

    # -- low-level I/O hooks (sockets override) ------------------------------------
    def _write(self, data: memoryview | bytes) -> int:
        return os.write(self._wfd, data)

    def _writev(self, parts: list[Any]) -> int:
        return os.writev(self._wfd, parts)

    def _read(self, n: int) -> bytes:
        return os.read(self._rfd, n)


    def fileno(self) -> int:
        self._check_open("fileno")
        return self._rfd if self._rfd >= 0 else self._wfd

    def _wait_fd(self, op: str) -> int | None:
        fd = self._wfd if op == "send" else self._rfd
        return fd if fd >= 0 else None

    def _wait(self, op: str, deadline: Deadline) -> None:
        # One cached poll object per direction (the direction lock makes it single-threaded);
        # re-made when the fd changes (a FIFO reader swaps fds when writers leave).
        fd = self._wfd if op == "send" else self._rfd
        cached = self._polls.get(op)
        if cached is None or cached[0] != fd:
            p = select.poll()
            p.register(fd, _POLLOUT if op == "send" else _POLLIN)
            p.register(self._wake_fd(), _POLLIN)
            self._polls[op] = cached = (fd, p)
        if self._closed:
            return
        end = deadline.end
        if end == _INF:
            cached[1].poll()
        else:
            cached[1].poll(max(0, math.ceil((end - time.monotonic()) * 1000)))

    def _ready(self, op: str) -> bool:
        if op == "recv" and (self._decoder.next_frame_ready() or b"\n" in self._lines):
            return True
        return super()._ready(op)

    def _close(self) -> None:
        for fd in {self._rfd, self._wfd} - {-1}:
            try:
                os.close(fd)
            except OSError:
                pass
        self._rfd = self._wfd = -1
        self._release_wake()

    # -- sending -----------------------------------------------------------------
    def _oserror(self, e: OSError, op: str) -> Exception:
        if e.errno in (errno.EPIPE, errno.ECONNRESET):
            return PeerGone(f"{op} on {self.url}: the peer has gone ({e.strerror})", errno=e.errno)
        return from_oserror(e, self.url, op)

    #: True where the kernel may take part of a small frame (TCP): timed sends then wait for
    #: room for the whole frame first (_wait_room), so a timeout leaves the channel unchanged
    _room_check: bool = False

    def _wait_room(self, need: int, deadline: Deadline) -> None:
        """Wait until the socket has ``need`` bytes of send buffer free (sockets that set _room_check)."""

    def _pending_out(self) -> bool:
        return bool(self._pending)

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            try:
                n = self._writev(pending) if len(pending) > 1 else self._write(pending[0])
            except BlockingIOError:
                return
            except OSError as e:
                raise self._oserror(e, "send") from e
            while n and pending:
                if n >= pending[0].nbytes:
                    n -= pending.pop(0).nbytes
                else:
                    pending[0] = pending[0][n:]
                    n = 0

    def _try_send(self, data: bytes | memoryview, knobs: dict[str, Any]) -> bool:
        if self._pending:
            self._flush_pending()
            if self._pending:
                return False
        size = len(data) if data.__class__ is bytes else memoryview(data).nbytes
        framing = self.framing
        if framing == "frame":
            total = size + HEADER_SIZE
            parts: list[Any] = [_PACK(size) + data] if size < _SMALL_WRITE else [_PACK(size), data]
        elif framing == "line":
            if b"\n" in data:
                raise InvalidArgument(f"send on {self.url}: framing=line messages cannot contain a newline")
            parts = [bytes(data) + b"\n"]
            total = size + 1
        else:
            parts = [data]
            total = size
        if total == 0:
            return True
        try:
            n = self._write(parts[0]) if len(parts) == 1 else self._writev(parts)
        except BlockingIOError:
            return False
        except OSError as e:
            raise self._oserror(e, "send") from e
        if n < total:
            # Accepted: a half-written frame cannot be taken back. Keep the tail; the
            # template pushes it out until the deadline, the next send or close the rest.
            tail: list[memoryview] = []
            for p in parts:
                v = memoryview(p)
                if n >= v.nbytes:
                    n -= v.nbytes
                    continue
                tail.append(v[n:])
                n = 0
            self._pending = tail
        return True

    # -- receiving ---------------------------------------------------------------
    def _read_some(self, want: int) -> bytes | None:
        """Read what is there (None: nothing now; b'': EOF)."""
        try:
            return self._read(max(want, _READ_CHUNK))
        except BlockingIOError:
            return None
        except OSError as e:
            raise self._oserror(e, "recv") from e

    def _on_eof(self) -> bool:
        """The stream said EOF: True if it is final (raise), False to keep waiting (FIFO: new writers)."""
        return True

    def _at_eof(self, mid: bool) -> None:
        self._eof = True
        if mid:
            self._decoder.eof()  # raises ProtocolError
            raise ProtocolError(f"{self.url}: stream ended inside a frame")
        raise ChannelClosed(f"recv on {self.url}: the peer closed the channel")

    # -- the one blocking path per direction (the template's hot path lands here) ---------
    # Written out flat: at 64 B a message costs ~1 µs here, and every Python call level
    # the general helpers add is a measurable share of it.
    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        # The direction lock costs ~0.2 µs a call here, a fifth of a 64 B message: a process
        # with no other thread (only this one can start one, and it is busy here) skips it.
        lock = self._send_lock if other_threads() else None
        if lock is not None:
            self._acquire(lock, "send", deadline)
        try:
            if self._closed:
                self._check_open("send")
            if self._room_check and deadline.timeout is not None and not self._pending:
                size = len(data) if data.__class__ is bytes else memoryview(data).nbytes
                if size <= _ATOMIC_MAX:
                    self._wait_room(size + _ROOM_MARGIN, deadline)
            if not self._pending and data.__class__ is bytes and self.framing == "frame":
                size = len(data)
                if size < _SMALL_WRITE:
                    buf = _PACK(size) + data
                    try:
                        n = self._write(buf)
                    except BlockingIOError:
                        n = -1
                    except OSError as e:
                        raise self._oserror(e, "send") from e
                    if n == size + HEADER_SIZE:
                        return
                    if n > 0:  # accepted, part written: the tail goes out like any pending tail
                        self._pending = [memoryview(buf)[n:]]
                        data = b""
            if data or not self._pending:
                while not self._try_send(data, knobs):
                    if deadline.nonblocking or deadline.expired():
                        raise deadline.error(f"send on {self.url}")
                    self._wait("send", deadline)
                    self._check_open("send")
            while self._pending and not deadline.expired():
                self._wait("send", deadline)
                self._check_open("send")
                self._flush_pending()
        finally:
            if lock is not None:
                lock.release()

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        # Poll first when nothing is buffered (returns at once if bytes or a hang-up are
        # there), then one read: this skips a failed read + exception in request/reply.
        lock = self._recv_lock if other_threads() else None  # see _send_blocking
        if lock is not None:
            self._acquire(lock, "recv", deadline)
        try:
            dec = self._decoder
            while True:
                if self._closed:
                    self._check_open("recv")
                if self.framing == "frame" and self._big is None:
                    frame = dec.next_frame()  # a whole frame already buffered: no syscall
                    if frame is not None:
                        return frame
                    if dec.at_boundary and not self._eof and deadline.timeout != 0:
                        self._wait("recv", deadline)
                        if self._closed:
                            self._check_open("recv")
                        try:
                            chunk = self._read(_READ_CHUNK)
                        except BlockingIOError:
                            chunk = None
                        except OSError as e:
                            raise self._oserror(e, "recv") from e
                        if chunk:
                            if len(chunk) >= HEADER_SIZE:
                                # the usual case: the read returned exactly one whole frame
                                (n,) = _UNPACK(chunk)
                                if n + HEADER_SIZE == len(chunk) and n <= self._decoder_max:
                                    return chunk[HEADER_SIZE:]
                            dec.feed(chunk)
                            continue
                        if chunk is not None and self._on_eof():
                            self._at_eof(False)
                        if deadline.expired():
                            raise deadline.error(f"recv on {self.url}")
                        continue
                elif deadline.timeout != 0 and not self._eof:
                    self._wait("recv", deadline)
                    self._check_open("recv")
                got = self._try_recv(knobs)
                if got is not None:
                    return got
                if deadline.nonblocking or deadline.expired():
                    raise deadline.error(f"recv on {self.url}")
        finally:
            if lock is not None:
                lock.release()

    def _try_recv(self, knobs: dict[str, Any]) -> Any:
        if self.framing == "line":
            return self._try_line()
        if self.framing == "raw":
            if self._eof:
                raise ChannelClosed(f"recv on {self.url}: the peer closed the channel")
            chunk = self._read_some(_READ_CHUNK)
            if chunk is None:
                return None
            if not chunk:
                if not self._on_eof():
                    return None
                self._at_eof(False)
            return chunk
        dec = self._decoder
        while True:
            if self._big is not None:
                return self._fill_big()
            frame = dec.next_frame()
            if frame is not None:
                return frame
            if self._eof:
                self._at_eof(not dec.at_boundary)
            missing = dec.missing()
            if missing >= _DIRECT_READ and dec.buffered >= HEADER_SIZE:
                self._start_big()
                continue
            chunk = self._read_some(missing)
            if chunk is None:
                return None
            if not chunk:
                if not self._on_eof():
                    return None
                self._at_eof(not dec.at_boundary)
            if dec.at_boundary and len(chunk) >= HEADER_SIZE:
                # the usual case: the read returned exactly one whole frame
                (n,) = _UNPACK(chunk)
                if n + HEADER_SIZE == len(chunk) and n <= self._decoder_max:
                    return chunk[HEADER_SIZE:]
            dec.feed(chunk)

    def _start_big(self) -> None:
        # The size is the peer's word (a 4-byte prefix): the Filler starts at 1 MiB and
        # doubles only as payload arrives, so a forged prefix and silence cost 1 MiB, not n.
        # It fills the bytes object recv returns, so take() needs no copy (no 2x peak).
        dec = self._decoder
        buffered = dec.take()
        (n,) = HEADER.unpack_from(buffered)
        self._big = _Filler(n, memoryview(buffered)[HEADER_SIZE:])

    def _fill_big(self) -> bytes | None:
        big = self._big
        assert big is not None
        while big.filled < big.total:
            try:
                n = big.readinto(self._rfd)
            except BlockingIOError:
                return None
            except OSError as e:
                raise self._oserror(e, "recv") from e
            if n == 0:
                if not self._on_eof():
                    return None
                self._eof = True
                raise ProtocolError(
                    f"{self.url}: stream ended inside a frame ({big.filled} of {big.total} payload bytes)")
        self._big = None
        return big.take()

    def _try_line(self) -> bytes | None:
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
            chunk = self._read_some(_READ_CHUNK)
            if chunk is None:
                return None
            if not chunk:
                if not self._on_eof():
                    return None
                self._eof = True
                continue
            buf += chunk

    def close(self) -> None:
        # A pending tail belongs to an accepted message: deliver it before closing,
        # for at most self.linger seconds (linger=, default LINGER). If another thread is sending right now, close
        # interrupts it instead (its frame is cut short: the peer's ProtocolError).
        lock = self._locks.get("send")
        if not self._closed and self._pending and lock is not None and lock.acquire(False):
            try:
                self._linger(Deadline(self.linger))
            finally:
                lock.release()
        super().close()

    def _linger(self, deadline: Deadline) -> None:
        p = select.poll()
        p.register(self._wfd, _POLLOUT)
        try:
            while self._pending and not deadline.expired():
                p.poll(deadline.remaining_ms())
                self._flush_pending()
        except (PeerGone, ChannelClosed):
            pass
