"""Unix-domain stream sockets: ``unix:///abs/path``, ``unix://NAME``, abstract ``unix://@NAME``.

Contract card:

* Addresses: ``unix://NAME`` lives in ``runtime_dir("sock")`` (a 0700 directory
  of ours); ``unix:///abs/path`` is used as given (the socket file is still
  0600); ``unix://@NAME`` is the Linux abstract namespace, used only when the
  ``@`` form is written: it has no file and no permissions, so the peer
  credential check below is its only protection.
* ``kipc.listen(url)`` binds (exclusively) and ``accept()`` yields one duplex
  :class:`UnixChannel` per peer; ``kipc.open(url)`` connects.
* Peer check: both sides read ``SO_PEERCRED``. ``accept`` refuses a peer whose
  uid is not ours (or in ``allow_uids=``): it closes the connection, logs the
  refusal (logger ``"kipc"``, naming ``allow_uids=``) and waits on for the next
  peer (``SO_PEERCRED`` needs no exchange, so nothing waits on the peer); ``open`` refuses a listener run by
  another uid the same way. ``ch.peer_pid`` / ``ch.peer_uid`` tell who it is.
* Stale socket: if the path exists, a probe connect decides. A live listener
  answering -> :class:`AlreadyExists`. ``ECONNREFUSED`` on a socket file owned
  by us (a listener that died without cleaning up) -> the file is replaced.
  Anything else at the path (a regular file, another uid's socket) is refused.
* Boundaries: framed (``framing=line/raw`` for shell tools such as ``socat``).
  FIFO order, max message ``max_message_size`` (default 1 GiB), ``timeout=`` on
  send/recv; ``timeout=`` at open bounds the connect (default 10 s).
  Sends use ``MSG_NOSIGNAL``; a vanished peer is :class:`PeerGone`.
* Cleanup: the listener (the creator) unlinks its socket file on close, if the
  file is still the one it bound; connections stay usable after that.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from typing import Any, ClassVar

from .. import _owners
from .._base import Deadline
from .._framing import DEFAULT_MAX_FRAME
from .._kinds import ObjectInfo, PathKind
from .._naming import (
    ParsedURL,
    parse_float,
    parse_int,
    parse_seconds,
    parse_url,
    runtime_dir,
    validate_mode,
    validate_name,
    validate_path,
)
from .._objects import file_identity, parse_uids
from ..codecs import Codec
from ..errors import AlreadyExists, InvalidArgument, KipcError, PermissionDenied, Unsupported, from_oserror
from ._sock import SocketChannel, SocketListener, connect
from ._stream import LINGER

__all__ = ["KIND", "UnixChannel", "UnixListener", "peer_credentials"]

SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 for the NUL
_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (``SO_PEERCRED``)."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def _check_peer(sock: socket.socket, allow: frozenset[int], url: str, op: str) -> tuple[int, int]:
    pid, uid, _gid = peer_credentials(sock)
    me = os.geteuid()
    if uid != me and uid not in allow:
        raise PermissionDenied(
            f"{op} {url}: peer pid {pid} runs as uid {uid}, not {me}; refused "
            f"(pass allow_uids=[{uid}] to accept it)")
    return pid, uid


def _address(parsed: ParsedURL) -> tuple[str | bytes, str | None]:
    """(socket address, filesystem path or None for abstract) from a ``unix://`` URL."""
    netloc, path = parsed.netloc, parsed.path
    if netloc.startswith("@"):
        if path:
            raise InvalidArgument(f"{parsed.url}: an abstract name cannot have a path")
        name = validate_name(netloc[1:], what="abstract socket name", max_len=SUN_PATH_MAX - 1)
        return b"\0" + name.encode(), None
    if netloc:
        if path:
            raise InvalidArgument(f"{parsed.url}: use unix://NAME or unix:///absolute/path")
        name = validate_name(netloc, what="socket name")  # before runtime_dir() touches the disk
        full = os.path.join(runtime_dir("sock"), name)
    else:
        full = validate_path(path, what="socket path")
    if len(os.fsencode(full)) > SUN_PATH_MAX:
        raise InvalidArgument(f"{parsed.url}: socket path {full!r} is {len(os.fsencode(full))} bytes; "
                              f"the kernel limit (sun_path) is {SUN_PATH_MAX}")
    return full, full


def _stream_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options.pop(k) for k in ("codec", "framing", "max_message_size", "linger") if k in options}


class UnixChannel(SocketChannel):
    """One connected end of a Unix stream socket (duplex)."""

    scheme: ClassVar[str] = "unix"
    peer_pid: int | None = None
    peer_uid: int | None = None

    def __init__(self, url: str, *, timeout: float | str | None = 10.0, allow_uids: Any = None,
                 codec: str | Codec | None = None, framing: str = "frame",
                 max_message_size: int | str = DEFAULT_MAX_FRAME, linger: float | str = LINGER) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "unix":
            raise InvalidArgument(f"{url}: not a unix:// URL")
        address, _path = _address(parsed)
        allow = parse_uids(allow_uids)
        deadline = Deadline(parse_seconds(timeout))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            connect(sock, address, deadline, url)
            self.peer_pid, self.peer_uid = _check_peer(sock, allow, url, "connect to")
            self._init_socket(url, sock, codec=codec, framing=framing, max_message_size=max_message_size,
                              linger=linger)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def _accepted(cls, url: str, sock: socket.socket, peer: tuple[int, int], options: dict[str, Any]) -> UnixChannel:
        self = cls.__new__(cls)
        self.peer_pid, self.peer_uid = peer
        self._init_socket(url, sock, **options)
        return self


class UnixListener(SocketListener):
    """A bound, listening Unix socket; ``accept()`` returns a :class:`UnixChannel` per peer."""

    scheme: ClassVar[str] = "unix"
    _path: str | None = None
    _ident: tuple[int, int] | None = None

    def __init__(self, url: str, *, backlog: int | str = 128, allow_uids: Any = None, mode: int = 0o600,
                 handshake_timeout: float | str = 10.0, **stream_options: Any) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "unix":
            raise InvalidArgument(f"{url}: not a unix:// URL")
        address, path = _address(parsed)
        mode = validate_mode(mode)
        self._allow = parse_uids(allow_uids)
        opts = _stream_options(stream_options)
        if stream_options:
            raise TypeError(f"unexpected option(s) for a unix listener: {', '.join(sorted(stream_options))}")
        self._options = opts
        self.handshake_timeout = float(parse_float(handshake_timeout, what="handshake_timeout"))
        self.url = url
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._bind(sock, address, path)
            if path is not None:
                # bind() creates the file with 0777 & ~umask: set the mode explicitly. A peer
                # slipping in before chmod still meets the SO_PEERCRED check at accept.
                os.chmod(path, mode)
                st = os.lstat(path)
                self._path, self._ident = path, (st.st_dev, st.st_ino)
                self.owner = True  # the socket file is ours to remove (in this process only)
                _owners.record(url, "unix", path=path, identity=file_identity(st, path=path))
            sock.listen(parse_int(backlog, what="backlog", hex=False, minimum=0))
            sock.setblocking(False)
        except KipcError:
            sock.close()
            self._unlink_file()
            raise
        except OSError as e:
            sock.close()
            self._unlink_file()
            raise from_oserror(e, url, "listen on") from e
        except BaseException:
            sock.close()
            self._unlink_file()
            raise
        self._sock = sock
        self._init_listener(url)

    def _bind(self, sock: socket.socket, address: str | bytes, path: str | None) -> None:
        try:
            sock.bind(address)
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            if path is None:
                raise AlreadyExists(f"listen on {self.url}: the abstract name is in use", errno=e.errno) from e
        self._replace_stale(path)
        sock.bind(address)

    def _replace_stale(self, path: str) -> None:
        """The path exists: unlink it only if it is our socket file and nobody listens on it."""
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise AlreadyExists(f"listen on {self.url}: {path} exists and is not a socket")
        if st.st_uid != os.geteuid():
            raise AlreadyExists(f"listen on {self.url}: {path} is a socket of uid {st.st_uid}; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.setblocking(False)
            err = probe.connect_ex(path)
        finally:
            probe.close()
        if err != errno.ECONNREFUSED:
            raise AlreadyExists(f"listen on {self.url}: a live listener answers at {path}")
        os.unlink(path)  # stale: its listener died without cleaning up

    def _make_channel(self, conn: socket.socket) -> UnixChannel:
        peer = _check_peer(conn, self._allow, self.url, "accept on")
        return UnixChannel._accepted(self.url, conn, peer, self._options)

    def _unlink_file(self) -> None:
        path, ident = self._path, self._ident
        self._path = self._ident = None
        if path is None or ident is None:
            return
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == ident:  # still ours, not a successor's socket
                os.unlink(path)
        except FileNotFoundError:
            pass
        _owners.forget(self.url)

    def _unlink(self) -> None:
        self._unlink_file()


# -- object kind: how kipc ls / rm / gc see socket files (found through the listeners' owner records) -------
class _SocketKind(PathKind):
    def locate(self, parsed: ParsedURL) -> Any:
        if parsed.netloc.startswith("@"):
            return parsed.netloc  # abstract: nothing on disk
        return super().locate(parsed)

    def stat(self, target: Any) -> ObjectInfo | None:
        if target.startswith("@"):
            raise Unsupported(f"unix://{target}: an abstract socket has no file; it goes away with its listener")
        return super().stat(target)


KIND = _SocketKind("unix", sub="sock", is_type=stat.S_ISSOCK, noun="socket",
                   description="unix (owner records; the socket node)")
