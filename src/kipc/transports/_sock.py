"""Socket plumbing shared by ``unix://`` and ``tcp://``: a framed stream channel over a socket,
a listener template, non-blocking connect with a deadline, and exact reads/writes for handshakes.

* Sends use ``MSG_NOSIGNAL``: a vanished peer is :class:`PeerGone`, never SIGPIPE.
* Connect and handshakes honour a deadline (``timeout=`` at open/accept); a
  listener's per-connection handshake is bounded too, so one silent peer
  cannot stall ``accept`` forever.
* A listener raises the refusal (:class:`PermissionDenied`) from ``accept``
  after closing the refused connection; the listener itself stays usable.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any, ClassVar

from .._base import Deadline, Listener
from ..errors import PeerGone, ProtocolError, from_oserror
from ._stream import StreamChannel, wait_fd

__all__ = ["SocketChannel", "SocketListener", "connect", "recv_exact", "send_exact"]

_NOSIGNAL = socket.MSG_NOSIGNAL


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
        self._recv_into = sock.recv_into
        fd = sock.fileno()
        self._init_stream(url, fd, fd, **stream_options)

    def _write(self, data: memoryview | bytes) -> int:
        return self._send_raw(data, _NOSIGNAL)

    def _writev(self, parts: list[Any]) -> int:
        return self._sendmsg(parts, (), _NOSIGNAL)

    def _read(self, n: int) -> bytes:
        return self._recv_raw(n)

    def _readinto(self, buf: memoryview) -> int:
        return self._recv_into(buf)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._rfd = self._wfd = -1
        self._release_wake()


class SocketListener(Listener):
    """Accept loop shared by unix/tcp; subclasses build the channel in :meth:`_make_channel`."""

    _sock: socket.socket | None = None
    #: upper bound for the peer check / auth handshake of one incoming connection
    handshake_timeout: float = 10.0

    def fileno(self) -> int:
        self._check_open("fileno")
        assert self._sock is not None
        return self._sock.fileno()

    def _wait_fd(self, op: str) -> int | None:
        return self._sock.fileno() if self._sock is not None else None

    def _try_accept(self) -> Any:
        assert self._sock is not None
        try:
            conn, _addr = self._sock.accept()
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                return None  # the peer gave up before we accepted: wait for the next one
            raise from_oserror(e, self.url, "accept") from e
        conn.setblocking(False)
        # The handshake (peer check, auth) is bounded by handshake_timeout.
        try:
            return self._make_channel(conn, Deadline(self.handshake_timeout))
        except BaseException:
            conn.close()
            raise

    def _make_channel(self, conn: socket.socket, deadline: Deadline) -> Any:
        raise NotImplementedError

    def _close(self) -> None:
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
