"""Socket plumbing shared by ``unix://`` and ``tcp://``: a framed stream channel over a socket,
a listener template, non-blocking connect with a deadline, and exact reads/writes for handshakes.

* Sends use ``MSG_NOSIGNAL``: a vanished peer is :class:`PeerGone`, never SIGPIPE.
* Connect and handshakes honour a deadline (``timeout=`` at open/accept). A
  listener drives its peers' handshakes concurrently and without blocking
  (each bounded by ``handshake_timeout``), so silent peers never stall
  ``accept``, another peer's handshake or an event loop.
* A listener closes a refused or failed peer, logs it (logger ``"kipc"``) and
  skips it: ``accept`` waits on for a good peer within its own timeout and
  ``for conn in listener`` survives it.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections.abc import Generator
from typing import Any, ClassVar

from .._base import Deadline, Listener
from ..errors import KipcError, PeerGone, ProtocolError, Timeout, from_oserror
from ._stream import StreamChannel, wait_fd

__all__ = ["MAX_HANDSHAKES", "SocketChannel", "SocketListener", "Steps", "connect", "recv_exact", "send_exact"]

_NOSIGNAL = socket.MSG_NOSIGNAL
log = logging.getLogger("kipc")


class SocketChannel(StreamChannel):
    """A connected stream socket carrying kipc frames (``framing=line/raw`` also work)."""

    scheme: ClassVar[str] = ""
    _sock: socket.socket | None = None

    def _init_socket(self, url: str, sock: socket.socket, **stream_options: Any) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._send_raw = sock.send
        self._sendmsg = sock.sendmsg
        self._recv_raw = sock.recv
        fd = sock.fileno()
        self._init_stream(url, fd, fd, **stream_options)

    def _write(self, data: memoryview | bytes) -> int:
        return self._send_raw(data, _NOSIGNAL)

    def _writev(self, parts: list[Any]) -> int:
        return self._sendmsg(parts, (), _NOSIGNAL)

    def _read(self, n: int) -> bytes:
        return self._recv_raw(n)


    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._rfd = self._wfd = -1
        self._release_wake()


#: a handshake: a generator that yields bytes to write or an int (how many bytes to read, sent back in)
Steps = Generator["bytes | int", "bytes | None", None]
#: most connections a listener handshakes at once; more wait in the kernel's backlog
MAX_HANDSHAKES = 256


class _Handshake:
    """One connection mid-handshake, driven without blocking: write what fits, read what is there."""

    __slots__ = ("conn", "end", "got", "out", "steps", "want")

    def __init__(self, conn: socket.socket, steps: Steps, end: float) -> None:
        self.conn, self.steps, self.end = conn, steps, end
        self.out = memoryview(b"")
        self.got = bytearray()
        self.want = 0
        self._next(None)

    def _next(self, value: bytes | None) -> bool:
        try:
            step = self.steps.send(value)
        except StopIteration:
            return True
        if isinstance(step, int):
            self.want, self.got = step, bytearray()
        else:
            self.out, self.want = memoryview(step), 0
        return False

    @property
    def events(self) -> int:
        return select.EPOLLOUT if self.out else select.EPOLLIN

    def advance(self, url: str) -> bool:
        """Move as far as the socket allows now; True once the handshake is complete (errors raise)."""
        conn = self.conn
        while True:
            try:
                if self.out:
                    self.out = self.out[conn.send(self.out, _NOSIGNAL):]
                    if self.out:
                        return False
                    if self._next(None):
                        return True
                    continue
                chunk = conn.recv(self.want - len(self.got))
            except BlockingIOError:
                return False
            except OSError as e:
                raise PeerGone(f"handshake with {url}: the peer has gone ({e.strerror})", errno=e.errno) from e
            if not chunk:
                raise ProtocolError(f"handshake with {url}: the peer closed the connection "
                                    f"after {len(self.got)} of {self.want} bytes")
            self.got += chunk
            if len(self.got) == self.want:
                if self._next(bytes(self.got)):
                    return True


class SocketListener(Listener):
    """Accept loop shared by unix/tcp; subclasses build the channel in :meth:`_make_channel`.

    A handshake that needs the peer to speak (tcp's ``auth=``) never blocks: each
    accepted connection joins a set of handshakes in progress, driven a step at a
    time when its socket is ready, each with its own deadline (``handshake_timeout``).
    ``accept`` returns the first connection whose handshake completed, so silent or
    slow peers never delay an honest one. Readiness covers the listening socket and
    the handshakes in progress: one epoll fd holds them all (``_wait_fd``; it is
    pollable, so ``kipc.wait`` and asyncio's ``add_reader`` use it as any fd).
    A refused or failed peer is closed, logged (logger ``"kipc"``, WARNING) and
    skipped: ``accept`` keeps waiting for a good one within its own timeout, and
    ``for conn in listener`` goes on.
    """

    _sock: socket.socket | None = None
    _epoll: Any = None
    _shaking: dict[int, _Handshake] = {}
    _listening: bool = False  # the listening fd is in the epoll set (not while MAX_HANDSHAKES are running)
    #: upper bound for the peer check / auth handshake of one incoming connection
    handshake_timeout: float = 10.0

    def _init_listener(self, url: str) -> None:
        assert self._sock is not None
        self._shaking = {}
        self._epoll = select.epoll(flags=select.EPOLL_CLOEXEC)
        self._epoll.register(self._sock.fileno(), select.EPOLLIN)
        self._listening = True
        super()._init_listener(url)

    def fileno(self) -> int:
        """The listening socket. With ``auth=`` it shows new peers, not handshake progress: to wait
        for an ``accept`` that may succeed use ``kipc.wait([listener])`` or ``aaccept`` (they
        wait on the epoll fd that holds the handshakes too)."""
        self._check_open("fileno")
        assert self._sock is not None
        return self._sock.fileno()

    def _wait_fd(self, op: str) -> int | None:
        return self._epoll.fileno() if self._epoll is not None else None

    def _wait(self, op: str, deadline: Deadline) -> None:
        if self._shaking:  # wake by the first handshake deadline too, to drop the silent peer
            first = next(iter(self._shaking.values())).end
            if first < deadline.end:
                deadline = Deadline(max(0.0, first - time.monotonic()))
        super()._wait(op, deadline)

    def _handshake(self, conn: socket.socket) -> Steps | None:
        """The handshake the peer must complete (None: nothing to exchange; tcp's auth= overrides)."""
        return None

    def _make_channel(self, conn: socket.socket) -> Any:
        """The channel of a connection whose handshake completed (raise PermissionDenied to refuse)."""
        raise NotImplementedError

    def _refuse(self, conn: socket.socket, e: BaseException) -> None:
        try:
            peer = conn.getpeername()
        except OSError:
            peer = "?"
        conn.close()
        log.warning("kipc: %s: refused connection from %s: %s", self.url, peer or "a local peer", e)

    def _finish(self, conn: socket.socket) -> Any:
        try:
            return self._make_channel(conn)
        except (KipcError, OSError) as e:
            self._refuse(conn, e)
            return None
        except BaseException:
            conn.close()
            raise

    def _drop(self, hs: _Handshake) -> None:
        fd = hs.conn.fileno()
        del self._shaking[fd]
        self._epoll.unregister(fd)
        if not self._listening and self._sock is not None:
            self._epoll.register(self._sock.fileno(), select.EPOLLIN)
            self._listening = True

    def _try_accept(self) -> Any:
        assert self._sock is not None
        shaking = self._shaking
        while len(shaking) < MAX_HANDSHAKES:
            try:
                conn, _addr = self._sock.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the peer gave up before we accepted: take the next one
                raise from_oserror(e, self.url, "accept") from e
            conn.setblocking(False)
            try:
                steps = self._handshake(conn)
                if steps is None:
                    ch = self._finish(conn)
                    if ch is not None:
                        return ch
                    continue
                hs = _Handshake(conn, steps, time.monotonic() + self.handshake_timeout)
            except BaseException:
                conn.close()
                raise
            shaking[conn.fileno()] = hs
            self._epoll.register(conn.fileno(), hs.events)
            if self._advance(hs):
                ch = self._finish(conn)
                if ch is not None:
                    return ch
        if len(shaking) >= MAX_HANDSHAKES and self._listening:
            self._epoll.unregister(self._sock.fileno())  # leave the rest in the backlog for now
            self._listening = False
        if not shaking:
            return None
        now = time.monotonic()
        while shaking:  # handshakes are kept in deadline order (one timeout for all)
            hs = next(iter(shaking.values()))
            if hs.end > now:
                break
            self._drop(hs)
            self._refuse(hs.conn, Timeout(f"no complete handshake within {self.handshake_timeout:g} s"))
        for fd, _ev in self._epoll.poll(0):
            hs2 = shaking.get(fd)
            if hs2 is not None and self._advance(hs2):
                ch = self._finish(hs2.conn)
                if ch is not None:
                    return ch
        return None

    def _advance(self, hs: _Handshake) -> bool:
        """Drive one handshake; True when complete (it has then left the set). Failures are refused here."""
        events = hs.events
        try:
            done = hs.advance(self.url)
        except KipcError as e:
            self._drop(hs)
            self._refuse(hs.conn, e)
            return False
        if done:
            self._drop(hs)
        elif hs.events != events:
            self._epoll.modify(hs.conn.fileno(), hs.events)
        return done

    def _close(self) -> None:
        for hs in self._shaking.values():
            hs.conn.close()
        self._shaking = {}
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._release_wake()


def connect(sock: socket.socket, address: Any, deadline: Deadline, url: str) -> None:
    """Non-blocking connect that waits at most until ``deadline`` (``Timeout`` otherwise)."""
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
        # EINPROGRESS: TCP handshake running; EAGAIN: unix listener's backlog is full.
        while True:
            wait_fd(sock.fileno(), select.POLLOUT, deadline, f"connect to {url}")
            if err == errno.EAGAIN:
                err = sock.connect_ex(address)
                if err == errno.EAGAIN:
                    continue
                break
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            break
    if err == errno.EISCONN:
        err = 0
    if err:
        raise from_oserror(OSError(err, os.strerror(err)), url, "connect")


def send_exact(sock: socket.socket, data: bytes, deadline: Deadline, url: str) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view, _NOSIGNAL)
        except BlockingIOError:
            wait_fd(sock.fileno(), select.POLLOUT, deadline, f"handshake with {url}")
            continue
        except OSError as e:
            raise PeerGone(f"handshake with {url}: the peer has gone ({e.strerror})", errno=e.errno) from e
        view = view[n:]


def recv_exact(sock: socket.socket, n: int, deadline: Deadline, url: str) -> bytes:
    """Read exactly ``n`` bytes; EOF first is :class:`ProtocolError` (the peer hung up mid-handshake)."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except BlockingIOError:
            wait_fd(sock.fileno(), select.POLLIN, deadline, f"handshake with {url}")
            continue
        except OSError as e:
            raise PeerGone(f"handshake with {url}: the peer has gone ({e.strerror})", errno=e.errno) from e
        if not chunk:
            raise ProtocolError(f"handshake with {url}: the peer closed the connection "
                                f"after {len(buf)} of {n} bytes (refused?)")
        buf += chunk
    return bytes(buf)
