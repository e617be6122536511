"""TCP sockets: ``tcp://host:port`` (IPv6 as ``tcp://[::1]:port``).

Contract card:

* ``kipc.listen("tcp://127.0.0.1:0")`` binds (port 0 picks a free port;
  ``listener.url`` shows the real one) and ``accept()`` yields one duplex
  :class:`TcpChannel` per peer; ``kipc.open("tcp://h:p")`` connects.
* Loopback by default: binding a non-loopback address (``0.0.0.0``, a LAN
  address) is :class:`PermissionDenied` unless ``allow_remote=True``.
  An empty host means ``127.0.0.1``.
* ``TCP_NODELAY`` on both ends; sends use ``MSG_NOSIGNAL``.
* ``timeout=`` at open bounds connect + handshake (default 10 s); a listener
  bounds each peer's handshake by ``handshake_timeout`` (default 10 s) and
  runs the handshakes of all connecting peers at once without blocking, so a
  silent client delays neither an honest one nor the event loop.
* Optional shared secret ``auth=`` (bytes, or str as UTF-8): mutual
  HMAC-SHA256 challenge-response before any payload is decoded. Byte layout::

      server -> client   MAGIC (b"\\xffKIPC-AUTH-1\\n", 13 B) + nonce_s (32 random B)
      client -> server   nonce_c (32 random B) + HMAC(key, b"kipc-auth-1 client" + nonce_s + nonce_c)
      server -> client   HMAC(key, b"kipc-auth-1 server" + nonce_c + nonce_s)

  Digests are compared with ``hmac.compare_digest``; the labels stop a
  reflected answer. A wrong key is :class:`PermissionDenied` for the client;
  the server closes the connection, logs the refusal (logger ``"kipc"``) and
  goes on accepting. A client without
  ``auth=`` talking to an auth server reads MAGIC as a frame length of
  0x50494bff and gets :class:`ProtocolError`; a client with ``auth=`` talking
  to a server without it gets :class:`ProtocolError` when no challenge comes.
  The secret authenticates the peers; it does not encrypt the traffic.
* Boundaries: framed (``framing=line/raw`` for ``nc``); FIFO order; max
  message ``max_message_size`` (default 1 GiB); a forged length prefix above
  it is :class:`ProtocolError` before any allocation, one below it costs
  memory only as its payload arrives (see :mod:`kipc.transports._stream`).
* Cleanup: nothing named; closing the listener frees the port.
* ``kipc ls`` lists every listening TCP socket of the user (sock_diag or
  ``/proc/net/tcp``, :mod:`kipc._procnet`) with the pids and command holding it; a listener kipc
  made leaves an owner record (its URL and socket inode, dropped by
  ``close()`` in the listening process), so its row says ``kipc`` and whether
  its creator is alive.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import struct
import time
from typing import Any, ClassVar

from .. import _owners, _procnet
from .._base import Deadline
from .._framing import DEFAULT_MAX_FRAME
from .._kinds import ObjectInfo, RemoteKind
from .._naming import ParsedURL, parse_bool, parse_float, parse_int, parse_seconds, parse_url
from ..codecs import Codec
from ..errors import DeadlineExceeded, InvalidArgument, PermissionDenied, ProtocolError, from_oserror
from ._sock import SocketChannel, SocketListener, Steps, connect, recv_exact, send_exact
from ._stream import LINGER

__all__ = ["KIND", "MAGIC", "TcpChannel", "TcpListener"]

MAGIC = b"\xffKIPC-AUTH-1\n"
_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux: sk_meminfo[], SNDBUF at 3, WMEM_QUEUED at 5
_MEMINFO = struct.Struct("9I")
_NONCE = 32
_DIGEST = 32


def _mac(key: bytes, label: bytes, a: bytes, b: bytes) -> bytes:
    return hmac.new(key, b"kipc-auth-1 " + label + a + b, hashlib.sha256).digest()


def _key(auth: Any) -> bytes | None:
    if auth is None:
        return None
    if isinstance(auth, str):
        auth = auth.encode()
    if not isinstance(auth, (bytes, bytearray)):
        raise TypeError(f"auth must be bytes or str, not {type(auth).__name__}")
    if not auth:
        raise InvalidArgument("auth secret is empty")
    return bytes(auth)


def _hostport(parsed: ParsedURL, *, listening: bool) -> tuple[str, int]:
    if parsed.path not in ("", "/"):
        raise InvalidArgument(f"{parsed.url}: a tcp:// URL has no path (tcp://host:port)")
    netloc = parsed.netloc
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = netloc.rpartition(":")
        if not sep:
            host, port_text = netloc, ""
    if not port_text:
        raise InvalidArgument(f"{parsed.url}: needs a numeric port (tcp://127.0.0.1:9000; 0 = any free port)")
    port = parse_int(port_text, what=f"{parsed.url}: port", hex=False, minimum=0 if listening else 1, maximum=65535)
    return host or "127.0.0.1", port


def _resolve(host: str, port: int, url: str) -> tuple[int, Any]:
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise InvalidArgument(f"{url}: cannot resolve host {host!r} ({e.strerror})") from e
    return family, sockaddr


def _format(family: int, sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"tcp://[{host}]:{port}" if family == socket.AF_INET6 else f"tcp://{host}:{port}"


def _stream_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options.pop(k) for k in ("codec", "framing", "max_message_size", "linger") if k in options}


class TcpChannel(SocketChannel):
    """One connected end of a TCP connection (duplex)."""

    scheme: ClassVar[str] = "tcp"
    peer: tuple[str, int] | None = None

    def __init__(self, url: str, *, timeout: float | str | None = 10.0, auth: bytes | str | None = None,
                 codec: str | Codec | None = None, framing: str = "frame",
                 max_message_size: int | str = DEFAULT_MAX_FRAME, linger: float | str = LINGER) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "tcp":
            raise InvalidArgument(f"{url}: not a tcp:// URL")
        host, port = _hostport(parsed, listening=False)
        key = _key(auth)
        deadline = Deadline(parse_seconds(timeout))
        family, sockaddr = _resolve(host, port, url)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connect(sock, sockaddr, deadline, url)
            if key is not None:
                _client_handshake(sock, key, deadline, url)
            self.peer = sock.getpeername()[:2]
            self._init_socket(url, sock, codec=codec, framing=framing, max_message_size=max_message_size,
                              linger=linger)
        except BaseException:
            sock.close()
            raise

    # TCP, unlike pipes and unix sockets, takes part of a small write when almost full; the
    # tail would then wait in this process for the next send. For a send that may time out,
    # StreamChannel._send_blocking first waits for room for the whole frame (_wait_room), so
    # a timed-out send leaves the channel exactly unchanged.
    _room_check = True

    def _wait_room(self, need: int, deadline: Deadline) -> None:
        assert self._sock is not None
        delay = 0.0005
        while True:
            self._check_open("send")
            info = _MEMINFO.unpack(self._sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size))
            sndbuf, queued = info[3], info[5]
            if sndbuf - queued >= need or need > sndbuf:  # (a frame bigger than the buffer cannot wait)
                return
            left = deadline.remaining()
            if deadline.nonblocking or not left:
                raise deadline.error(f"send on {self.url}")
            time.sleep(min(delay, left))  # POLLOUT fires before this much room exists: back off instead
            delay = min(delay * 2, 0.01)

    @classmethod
    def _accepted(cls, url: str, sock: socket.socket, options: dict[str, Any]) -> TcpChannel:
        self = cls.__new__(cls)
        self.peer = sock.getpeername()[:2]
        self._init_socket(url, sock, **options)
        return self



def _client_handshake(sock: socket.socket, key: bytes, deadline: Deadline, url: str) -> None:
    try:
        head = recv_exact(sock, len(MAGIC) + _NONCE, deadline, url)
    except DeadlineExceeded:
        raise ProtocolError(f"connect to {url}: no auth challenge from the server within "
                            f"{deadline.timeout:g} s (does it use auth=?)") from None
    if not head.startswith(MAGIC):
        raise ProtocolError(f"connect to {url}: the server does not speak kipc auth")
    nonce_s = head[len(MAGIC):]
    nonce_c = secrets.token_bytes(_NONCE)
    send_exact(sock, nonce_c + _mac(key, b"client", nonce_s, nonce_c), deadline, url)
    try:
        proof = recv_exact(sock, _DIGEST, deadline, url)
    except (ProtocolError, ConnectionError) as e:
        raise PermissionDenied(f"connect to {url}: the server refused our authentication (wrong auth key?)") from e
    if not hmac.compare_digest(proof, _mac(key, b"server", nonce_c, nonce_s)):
        raise PermissionDenied(f"connect to {url}: the server failed authentication (wrong auth key?)")


def _server_steps(key: bytes, url: str) -> Steps:
    """The server's side of the auth exchange, as steps the listener drives without blocking."""
    nonce_s = secrets.token_bytes(_NONCE)
    yield MAGIC + nonce_s
    answer = yield _NONCE + _DIGEST
    assert answer is not None
    nonce_c, digest = answer[:_NONCE], answer[_NONCE:]
    if not hmac.compare_digest(digest, _mac(key, b"client", nonce_s, nonce_c)):
        raise PermissionDenied(f"accept on {url}: the peer failed authentication (wrong auth key?)")
    yield _mac(key, b"server", nonce_c, nonce_s)


class TcpListener(SocketListener):
    """A listening TCP socket; ``accept()`` returns a :class:`TcpChannel` per peer."""

    scheme: ClassVar[str] = "tcp"

    def __init__(self, url: str, *, backlog: int | str = 128, allow_remote: bool | str = False,
                 auth: bytes | str | None = None, handshake_timeout: float | str = 10.0,
                 **stream_options: Any) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "tcp":
            raise InvalidArgument(f"{url}: not a tcp:// URL")
        host, port = _hostport(parsed, listening=True)
        self._key = _key(auth)
        self._options = _stream_options(stream_options)
        if stream_options:
            raise TypeError(f"unexpected option(s) for a tcp listener: {', '.join(sorted(stream_options))}")
        self.handshake_timeout = float(parse_float(handshake_timeout, what="handshake_timeout"))
        family, sockaddr = _resolve(host, port, url)
        if not ipaddress.ip_address(sockaddr[0].split("%")[0]).is_loopback \
                and not parse_bool(allow_remote, what="allow_remote"):
            raise PermissionDenied(f"listen on {url}: {sockaddr[0]} is not a loopback address; "
                                   "pass allow_remote=True to accept connections from other hosts")
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old conns sit in TIME_WAIT
            sock.bind(sockaddr)
            sock.listen(parse_int(backlog, what="backlog", hex=False, minimum=0))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise from_oserror(e, url, "listen on") from e
        self._sock = sock
        self._init_listener(_format(family, sock.getsockname()))
        # for kipc ls (see KIND); not Resource.owner: a port is no named object to remove or warn about
        try:
            _owners.record(self.url, "tcp", identity={"ino": os.fstat(sock.fileno()).st_ino})
            self._recorder = os.getpid()
        except OSError:
            pass  # only kipc ls's "kipc" mark depends on it (e.g. an unusable runtime dir): listen all the same

    _recorder = 0

    def _close(self) -> None:
        super()._close()
        if self._recorder == os.getpid():  # a forked child's copy closes; the parent still listens
            _owners.forget(self.url)

    def _handshake(self, conn: socket.socket) -> Steps | None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return None if self._key is None else _server_steps(self._key, self.url)

    def _make_channel(self, conn: socket.socket) -> TcpChannel:
        return TcpChannel._accepted(self.url, conn, self._options)


# -- object kind: a port names nothing that outlives its listener -------------------------------------------
class _ListenerKind(RemoteKind):
    """Listening sockets (kipc._procnet: sock_diag, else /proc/net/tcp{,6}). Nothing to remove (a
    port goes with its process), so ``rm`` is Unsupported and ``gc`` only drops dead listeners' records."""

    lists_all = True

    def scan(self) -> list[ObjectInfo]:
        socks = _procnet.tcp_listeners()
        holders = _procnet.socket_holders({s.inode for s in socks}, {s.uid for s in socks})
        out = []
        for s in socks:
            url = _format(s.family, (s.host, s.port))
            pids = holders.get(s.inode, [])
            out.append(ObjectInfo(self.name, url, uid=s.uid, pids=pids, attached=len(pids) or None,
                                  command=",".join(dict.fromkeys(_procnet.command_of(p) for p in pids)) or None,
                                  identity={"ino": s.inode}, target=url[len("tcp://"):]))
        return out


KIND = _ListenerKind("tcp", "tcp (listening sockets, from the kernel's sock_diag or /proc/net/tcp{,6})")
