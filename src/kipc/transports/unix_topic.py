"""Publish/subscribe on a Unix socket: ``kipc.Topic("unix://cam", create=True, subscribe=False)``.

For hosts where shared memory is not wanted: one publisher process serves its
subscribers over a Unix stream socket, no broker. Opened through
:func:`kipc.Topic` (or :class:`UnixTopic` directly); addresses are those of
:mod:`kipc.transports.unix` (``unix://NAME``, ``unix:///abs/path``, ``unix://@NAME``).

Contract card:

* Roles: ``create=True, subscribe=False`` is the publisher (it binds the socket,
  exclusively, mode 0600, and is the only process that removes it); the
  default ``Topic("unix://cam")`` is a subscriber (it connects). One publisher
  per topic; a subscriber cannot send and the publisher cannot receive
  (:class:`Unsupported`).
* Delivery: every subscriber receives every message published after it
  connected, whole and in publish order. A subscriber joins at its connect:
  the publisher accepts waiting subscribers at the start of each ``send``,
  before it writes that message, so nothing published after ``Topic(...)``
  returned is missed.
* Slow subscribers, ``overflow="block"`` (default, lossless): a message goes
  into each subscriber's bounded queue (``queue=`` messages, default 64)
  and then into its socket buffer; ``send`` waits (or times out, leaving the
  topic unchanged) while the slowest subscriber's queue is full, and an
  untimed ``send`` returns once every subscriber's kernel buffer holds the
  message. ``overflow="drop_oldest"``: ``send`` never blocks; a full queue
  loses its oldest message not yet started. Every frame carries the publisher's
  sequence number, so each subscriber's ``.dropped`` is the exact count it
  missed. What is still queued goes out on the next ``send``, ``flush()`` or
  ``close()`` (which spends at most ``linger=`` seconds, default 2, on it).
* Writes: a subscriber with nothing queued gets each message at once, in one
  write; one that is behind gets its queued frames in one ``sendmsg`` (up to
  256 frames, no copy) as soon as its socket takes more. ``batch=True``
  (publisher only) trades latency for throughput: ``send`` returns once the
  message is in every subscriber's queue, and a queue goes out in one
  ``sendmsg`` when it holds ``queue=`` messages or 256 KiB, or at ``flush()``
  / ``close()`` — a message may wait in the publisher until then, so call
  ``flush()`` when you pause publishing (no background thread writes for you).
  The overflow policies are unchanged: ``block`` waits only while a queue is
  full *and* its socket takes nothing more; ``drop_oldest`` writes a full queue
  before it drops from it. Order, exactly-once and ``.dropped`` are as above;
  what a batching publisher still holds when it is killed is lost (without
  ``batch``, an untimed ``send`` has reached every subscriber's kernel buffer).
* Dead peers: a subscriber that dies or closes is dropped by the publisher at
  its next write (``EPIPE``), harming no one else. When the publisher closes or
  dies, subscribers read what was delivered and then get :class:`ChannelClosed`
  (a publisher killed mid-frame: :class:`ProtocolError`).
* Trust: peers are checked with ``SO_PEERCRED`` as on ``unix://`` (``allow_uids=``).
  A subscriber trusts nothing it reads: the frame length is bounded by
  ``max_message_size``, the first frame must be the 8-byte hello and sequence
  numbers must only go forward (:class:`ProtocolError` otherwise).
* It is a :class:`kipc.Channel`: ``recv``/``arecv``/iteration/``kipc.wait``,
  timeouts, ``close()`` from another thread, cancellation that loses nothing.

Wire format (after the socket's usual ``u32`` length-prefix framing): each frame
is ``u64`` little-endian sequence number + payload; the first frame on a
connection is the hello, the bare sequence number of the next message.
"""

from __future__ import annotations

import itertools
import math
import os
import select
import socket
import struct
import time
from collections import deque
from typing import Any, ClassVar

from .. import _owners
from .._base import Channel, Deadline
from .._framing import DEFAULT_MAX_FRAME, HEADER, MAX_FRAME, check_max
from .._naming import parse_int, parse_url, validate_size
from .._objects import file_identity
from ..codecs import Codec
from ..errors import InvalidArgument, KipcError, ProtocolError, Unsupported
from ._stream import LINGER, check_linger
from .unix import UnixChannel, UnixListener

__all__ = ["OVERFLOWS", "UnixTopic"]

OVERFLOWS = ("block", "drop_oldest")
_SEQ = struct.Struct("<Q")
_SEQ_SIZE = _SEQ.size
_WIRE = struct.Struct(HEADER.format + "Q")  # the socket framing's length prefix, then our sequence number
_NOSIGNAL = socket.MSG_NOSIGNAL
_BATCH = 256 * 1024  # batch=True: a subscriber's queue goes out once it holds this many bytes (or queue= frames)
_BATCH_FRAMES = 256  # most frames in one sendmsg (iovecs; IOV_MAX is 1024)
_POLLOUT = select.POLLOUT
_POLLIN = select.POLLIN


_forks = 0  # fork generation of this process: an end opened at another count belongs to an ancestor


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class _Sub:
    """The publisher's view of one subscriber: its connection, the frames not yet started
    (whole wire frames: length prefix, sequence number, payload) and the unwritten tail of
    the frames being written."""

    __slots__ = ("ch", "fd", "q", "qbytes", "send", "sendmsg", "tail")

    def __init__(self, ch: UnixChannel) -> None:
        assert ch._sock is not None
        self.ch, self.fd, self.send, self.sendmsg = ch, ch._sock.fileno(), ch._sock.send, ch._sock.sendmsg
        self.q: deque[bytes] = deque()
        self.qbytes = 0  # bytes in q
        self.tail: memoryview | None = None

    @property
    def busy(self) -> bool:
        return bool(self.q) or self.tail is not None


class UnixTopic(Channel):
    """One end of a ``unix://`` topic: the publisher (``create=True, subscribe=False``) or a subscriber."""

    scheme: ClassVar[str] = "unix"
    duplex: ClassVar[bool] = False
    overflow: str = "block"
    queue: int = 64
    batch: bool = False
    _maybe_full = False  # batch: some queue may be full (set when a push left one full)
    linger: float = LINGER
    _listener: UnixListener | None = None
    _lpoll: Any = None
    _sub: UnixChannel | None = None
    _subs: list[_Sub] = []
    _pid = 0  # the process that opened this end
    _fork_gen = 0
    _seq = 0  # publisher: number of the next message; subscriber: the one expected next
    _hello = False
    _dropped = 0

    def __init__(self, url: str, *, create: bool = False, subscribe: bool = True, codec: str | Codec | None = None,
                 overflow: str = "block", queue: int | str = 64, allow_uids: Any = None, mode: int = 0o600,
                 timeout: float | str | None = 10.0, max_message_size: int | str = DEFAULT_MAX_FRAME,
                 linger: float | str = LINGER, batch: bool = False) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "unix":
            raise InvalidArgument(f"{url}: not a unix:// URL")
        if parsed.query:
            raise InvalidArgument(f"{url}: pass the options of a unix:// topic as keywords")
        if overflow not in OVERFLOWS:
            raise InvalidArgument(f"{url}: overflow={overflow!r} is not one of {', '.join(OVERFLOWS)}")
        if create not in (True, False) or subscribe not in (True, False):
            raise InvalidArgument(f"{url}: create= and subscribe= are True or False")
        if create and subscribe:
            raise InvalidArgument(f"{url}: the publisher of a unix:// topic does not receive; pass subscribe=False "
                                  "(and open a second Topic to subscribe)")
        if not create and not subscribe:
            raise Unsupported(f"{url}: a unix:// topic has one publisher, the process that created it "
                              "(create=True); others subscribe")
        if batch not in (True, False):
            raise InvalidArgument(f"{url}: batch= is True or False")
        if batch and not create:
            raise InvalidArgument(f"{url}: batch= is a publisher option (create=True)")
        self.batch = batch
        self.overflow = overflow
        self.queue = parse_int(queue, what="queue", hex=False, minimum=1)
        self.linger = check_linger(linger, url)
        self._pid, self._fork_gen = os.getpid(), _forks
        if create:
            self._open_publisher(url, codec, allow_uids, mode, max_message_size)
        else:
            self._open_subscriber(url, codec, allow_uids, timeout, max_message_size)

    # -- opening -------------------------------------------------------------------------------
    def _open_publisher(self, url: str, codec: str | Codec | None, allow_uids: Any, mode: int,
                        max_message_size: int | str) -> None:
        self._subs = []
        # The listener owns the socket file (exclusive bind, 0600, stale-file rule, SO_PEERCRED at
        # accept); its accepted connections carry our frames. Only our close() closes it.
        size = _payload_limit(max_message_size)
        lst = UnixListener(url, allow_uids=allow_uids, mode=mode)
        self._listener = lst
        self._lpoll = select.poll()
        assert lst._sock is not None
        self._lpoll.register(lst._sock.fileno(), _POLLIN)
        # The topic, not its listener, owns the socket file: our finalizer must not remove it,
        # and our _unlink (creator's close only) does.
        self._owner, lst._owner = lst._owner, None
        try:
            if lst._path is not None:
                # the same owner record, marked as a topic so `kipc ls` can tell it from a channel listener
                ident = file_identity(os.lstat(lst._path), path=lst._path)
                _owners.record(url, "unix", path=lst._path, identity=ident, topic=True)
            self.readable = False
            self._init_channel(url, codec=codec)
            self.max_message_size = size
        except BaseException:
            self._listener = None
            lst.close()
            lst._unlink_file()
            self._owner = None
            raise

    def _open_subscriber(self, url: str, codec: str | Codec | None, allow_uids: Any, timeout: float | str | None,
                         max_message_size: int | str) -> None:
        limit = _payload_limit(max_message_size) + _SEQ_SIZE  # a frame is payload + sequence number
        self._sub = UnixChannel(url, timeout=timeout, allow_uids=allow_uids, max_message_size=limit)
        self.writable = False
        self._init_channel(url, codec=codec)

    @property
    def dropped(self) -> int:
        """Messages this subscriber missed because the publisher dropped them (overflow="drop_oldest")."""
        return self._dropped

    @property
    def subscribers(self) -> int:
        """Publisher: subscribers connected as of the last send or flush."""
        return len(self._subs)

    @property
    def peer_pid(self) -> int | None:
        """Subscriber: the publisher's pid (``SO_PEERCRED``)."""
        return self._sub.peer_pid if self._sub is not None else None

    def fileno(self) -> int:
        self._check_open("fileno")
        if self._sub is not None:
            return self._sub.fileno()
        return super().fileno()  # Unsupported: a publisher writes to many sockets

    # -- subscriber hooks ------------------------------------------------------------------------
    def _try_recv(self, knobs: dict[str, Any]) -> Any:
        sub = self._sub
        if sub is None:
            raise Unsupported(f"recv on {self.url}: the publisher of a topic does not receive")
        self._check_process("recv")
        while True:
            frame = sub._try_recv(knobs)
            if frame is None:
                return None
            if len(frame) < _SEQ_SIZE:
                raise ProtocolError(f"recv on {self.url}: a {len(frame)}-byte frame has no sequence number")
            (seq,) = _SEQ.unpack_from(frame)
            if not self._hello:
                if len(frame) != _SEQ_SIZE:
                    raise ProtocolError(f"recv on {self.url}: the publisher did not start with its hello")
                self._hello, self._seq = True, seq
                continue
            if seq < self._seq:
                raise ProtocolError(f"recv on {self.url}: sequence number went back from {self._seq} to {seq}")
            self._dropped += seq - self._seq
            self._seq = seq + 1
            return memoryview(frame)[_SEQ_SIZE:].tobytes()

    # one blocking path: the template's loop over _try_recv (the stream's own fast path would
    # hand back frames with their sequence number)
    _recv_blocking = Channel._recv_blocking

    def _wait_fd(self, op: str) -> int | None:
        if self._sub is not None and op == "recv":
            return self._sub._rfd
        return None

    def _ready(self, op: str) -> bool:
        if self._sub is not None and op == "recv":
            return self._sub._ready("recv")
        return op == "send" and self._sub is None and not self._full()

    # -- publisher hooks -------------------------------------------------------------------------
    def _accept_new(self) -> None:
        if not self._lpoll.poll(0):  # nobody waiting to join (cheaper than a failed accept)
            return
        lst = self._listener
        assert lst is not None
        while True:
            ch = lst._try_accept()
            if ch is None:
                return
            # hello: where its sequence starts (exact .dropped). 12 bytes into a fresh socket's
            # empty buffer always fit; a peer already gone is simply not added.
            hello = _WIRE.pack(_SEQ_SIZE, self._seq)
            try:
                assert ch._sock is not None
                ok = ch._sock.send(hello, _NOSIGNAL) == len(hello)
            except OSError:
                ok = False
            if ok:
                self._subs.append(_Sub(ch))
            else:
                ch.linger = 0
                ch.close()

    def _push(self, s: _Sub) -> bool:
        """Write what fits of ``s``'s queue; False if the subscriber has gone (it is then closed).

        Several queued frames go out in one ``sendmsg`` (at most _BATCH_FRAMES of them, no copy):
        frames in a write have started (a partly written one becomes ``s.tail``), so drop_oldest
        no longer drops them."""
        q = s.q
        try:
            tail = s.tail
            if tail is not None:
                n = s.send(tail, _NOSIGNAL)
                if n < len(tail):
                    s.tail = tail[n:]
                    return True
                s.tail = None
            while q:
                if len(q) == 1:
                    buf = q[0]
                    n = s.send(buf, _NOSIGNAL)
                    q.popleft()
                    s.qbytes -= len(buf)
                    if n < len(buf):
                        s.tail = memoryview(buf)[n:]
                    return True
                frames = list(itertools.islice(q, 0, _BATCH_FRAMES))
                n = s.sendmsg(frames, (), _NOSIGNAL)
                for f in frames:
                    size = len(f)
                    if n < size:  # the socket is full: the rest waits (a started frame as the tail)
                        if n:
                            q.popleft()
                            s.qbytes -= size
                            s.tail = memoryview(f)[n:]
                        return True
                    n -= size
                    q.popleft()
                    s.qbytes -= size
        except BlockingIOError:
            return True
        except OSError:  # EPIPE, ECONNRESET: the subscriber has gone
            self._gone(s)
            return False
        return True

    @staticmethod
    def _gone(s: _Sub) -> None:
        s.ch.linger = 0
        s.ch.close()
        s.tail = None
        s.q.clear()
        s.qbytes = 0

    def _push_all(self) -> None:
        gone = False
        for s in self._subs:
            if not self._push(s):
                gone = True
        if gone:
            self._subs = [s for s in self._subs if not s.ch.closed]

    def _full(self) -> bool:
        limit = self.queue
        for s in self._subs:
            if len(s.q) >= limit:
                return True
        return False

    def _check_process(self, op: str) -> None:
        if _forks != self._fork_gen:  # (no getpid() syscall per message)
            # the sockets are shared with the parent: two writers (or readers) would tear frames
            raise Unsupported(f"{op} on {self.url}: this topic end was opened by process {self._pid}; "
                              "a forked child opens its own")

    def _try_send(self, data: bytes | memoryview, knobs: dict[str, Any]) -> bool:
        self._check_process("send")
        self._accept_new()
        subs, limit, batch = self._subs, self.queue, self.batch
        block = self.overflow == "block"
        if not batch:
            self._push_all()
            if block and self._full():
                return False  # unchanged: nobody got it
        elif self._maybe_full:  # (queues only grow here, so a False flag is never stale)
            self._push_all()  # a full queue goes out now, whatever its size
            self._maybe_full = full = self._full()
            if block and full:
                return False
        frame = _WIRE.pack(len(data) + _SEQ_SIZE, self._seq) + data
        size = len(frame)
        self._seq += 1
        gone = False
        for s in subs:
            q = s.q
            if not batch and not q and s.tail is None:
                # nothing queued ahead of it (the usual case): straight to its socket
                try:
                    n = s.send(frame, _NOSIGNAL)
                except BlockingIOError:
                    n = 0
                except OSError:  # EPIPE, ECONNRESET: the subscriber has gone
                    self._gone(s)
                    gone = True
                    continue
                if n == 0:
                    q.append(frame)
                    s.qbytes += size
                elif n < size:
                    s.tail = memoryview(frame)[n:]
                continue
            if not block and len(q) >= limit:
                s.qbytes -= len(q.popleft())  # the oldest not started (a partly written one is s.tail)
            q.append(frame)
            s.qbytes += size
            if (not batch or len(q) >= limit or s.qbytes >= _BATCH) and not self._push(s):
                gone = True
            elif batch and len(q) >= limit:
                self._maybe_full = True  # its socket took nothing more
        if gone:
            self._subs = [s for s in subs if not s.ch.closed]
        return True

    def _pending_out(self) -> bool:
        # block: an untimed send returns once every subscriber's kernel buffer holds the message
        # (batch=True: once it is queued for every subscriber)
        return self.overflow == "block" and not self.batch and any(s.busy for s in self._subs)

    def _flush_pending(self) -> None:
        self._push_all()

    def _wait(self, op: str, deadline: Deadline) -> None:
        wake = self._wake_fd()
        if self._closed:
            return
        p = select.poll()
        p.register(wake, _POLLIN)
        if self._sub is not None:
            p.register(self._sub._rfd, _POLLIN)
        else:
            waiting = [s for s in self._subs if s.busy and not s.ch.closed]  # (closed meanwhile by close())
            if not waiting:
                return  # nothing to wait for: the next attempt succeeds
            for s in waiting:
                p.register(s.fd, _POLLOUT)
        end = deadline.end
        if end == math.inf:
            p.poll()
        else:
            p.poll(max(0, math.ceil((end - time.monotonic()) * 1000)))

    def flush(self, timeout: float | None = None) -> None:
        """Publisher: wait until every subscriber's kernel buffer holds everything queued (Timeout otherwise)."""
        deadline = Deadline.of(timeout)
        self._check_open("flush")
        if self._listener is None:
            return
        with self._locks["send"]:
            self._accept_new()
            self._push_all()
            while any(s.busy for s in self._subs):
                if deadline.nonblocking or deadline.expired():
                    raise deadline.error(f"flush on {self.url}")
                self._wait("send", deadline)
                self._check_open("flush")
                self._push_all()

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        # Queued frames belong to sent messages: push them out for at most `linger` seconds
        # (unless another thread is sending right now: close interrupts it instead).
        lock = self._locks.get("send")
        if not self._closed and self._subs and lock is not None and lock.acquire(False):
            try:
                deadline = Deadline(self.linger)
                self._push_all()
                while any(s.busy for s in self._subs) and not deadline.expired():
                    self._wait("send", deadline)
                    self._push_all()
            except KipcError:
                pass
            finally:
                lock.release()
        super().close()

    def _close(self) -> None:
        for s in self._subs:
            s.ch.linger = 0  # close() above already spent the linger
            s.ch.close()
        self._subs = []
        if self._sub is not None:
            self._sub.close()
        if self._listener is not None:
            self._listener.close()  # releases the socket; the file goes in _unlink (creator only)
        self._release_wake()

    def _unlink(self) -> None:
        if self._listener is not None:
            self._listener._unlink_file()

    def _interrupt(self) -> None:
        super()._interrupt()
        if self._sub is not None:
            self._sub._interrupt()


def _payload_limit(value: int | str) -> int:
    size = validate_size(value, what="max_message_size") if isinstance(value, str) else check_max(value)
    if size > MAX_FRAME - _SEQ_SIZE:
        raise InvalidArgument(f"max_message_size {size} is outside 0..{MAX_FRAME - _SEQ_SIZE} "
                              f"(a topic frame also carries an {_SEQ_SIZE}-byte sequence number)")
    return size
