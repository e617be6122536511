"""Request/reply on one host: ``kipc.Server`` and ``kipc.Client`` over ``ring://``, ``unix://``, ``tcp://``.

Contract card:

* ``Server(url, create=True)`` serves; ``req = server.recv(timeout=)`` (also
  ``for req in server``, ``await server.arecv()``) returns a :class:`Request`
  with ``req.data`` (decoded by the codec) and ``req.reply(data)``.
  ``Client(url)``; ``client.request(data, timeout=)`` / ``await
  client.arequest(...)`` returns the decoded reply.
* Matching: every request carries a 64-bit id chosen by its client; a reply
  carries it back and a client returns only the reply to its own request (a
  late reply to an earlier request that timed out is dropped). No cross-talk
  between clients: each client has its own return path (its connection, or
  its own reply ring).
* Many clients, and on ``ring://`` several servers sharing the load (each
  request goes to one server: the request ring is a many-consumer queue);
  open further servers with ``Server(url)`` (no ``create``). On ``unix://``
  and ``tcp://`` one server process accepts the clients (``auth=`` for tcp
  as usual); threads of it may call ``recv`` concurrently.
* Timeouts on both sides. A client whose server dies mid-request gets
  :class:`PeerGone` (the connection ended; on ``ring://``: the ring's creating
  server is gone) or :class:`Timeout` — never a hang with a timeout. On
  ``ring://`` with several servers, a non-creating server dying mid-request is
  noticed only by the client's timeout: give one.
* A reply to a client that died is dropped without harming the server
  (``reply`` returns False). A reply waits at most ``reply_timeout`` (1 s)
  for room in a client's ring, then is dropped.
* Wire format (the codec applies to payloads only): request =
  ``b"KRQ1" u64 id u16 len return-address payload``; reply =
  ``b"KRP1" u64 id payload``. A message that is not one of these is dropped
  and counted in ``server.malformed`` / ``client.malformed``.
* Cleanup: a ring server created with ``create=True`` removes the request
  ring on close; a client removes its reply ring on close (``kipc gc`` after
  SIGKILL, as for every ring).

NATS has its own request/reply (``nats://``, core NATS subjects) in the NATS
transport; this module covers one host.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import _owners
from ._base import Channel, Deadline, Listener, Resource
from ._naming import parse_url
from ._waiting import wait
from .codecs import Codec, get_codec
from .errors import ChannelClosed, DeadlineExceeded, InvalidArgument, KipcError, NotFound, PeerGone
from .registry import listen
from .registry import open as open_channel

__all__ = ["Client", "Request", "Server"]

_BYTES = get_codec(None)
_REQ = struct.Struct("<4sQH")
_REP = struct.Struct("<4sQ")
_REQ_MAGIC, _REP_MAGIC = b"KRQ1", b"KRP1"
_SCHEMES = ("ring", "unix", "tcp")
_REPLY_TIMEOUT = 1.0
_CACHE = 64  # reply rings a ring server keeps open
_LIVENESS = 0.25  # seconds between checks that a ring's creating server still runs


def _scheme(url: str) -> str:
    scheme = parse_url(url).scheme
    if scheme not in _SCHEMES:
        raise InvalidArgument(f"{url}: request/reply runs on {', '.join(s + '://' for s in _SCHEMES)} "
                              "(nats:// has its own request/reply)")
    return scheme


class Request:
    """One request: ``data`` (decoded), ``reply(data)``; each request is answered at most once."""

    __slots__ = ("_id", "_replied", "_to", "data", "server")
    data: object  # bytes with the default codec, the decoded value with codec= (narrow it)

    def __init__(self, server: Server, rid: int, to: Any, data: Any) -> None:
        self.server, self._id, self._to, self.data = server, rid, to, data
        self._replied = False

    def reply(self, data: Any, *, timeout: float | None = None) -> bool:
        """Send the reply; False if the client has gone (the reply is dropped)."""
        if self._replied:
            raise InvalidArgument("this request was already answered")
        self._replied = True
        return self.server._reply(self._to, self._id, data, timeout)

    async def areply(self, data: Any, *, timeout: float | None = None) -> bool:
        if self._replied:
            raise InvalidArgument("this request was already answered")
        self._replied = True
        return await self.server._areply(self._to, self._id, data, timeout)

    def __repr__(self) -> str:
        return f"<Request {self._id} on {self.server.url}>"


class Server(Resource):
    """Answers requests on ``url``; see the module docstring."""

    malformed = 0

    def __init__(self, url: str, *, create: bool | str = False, codec: str | Codec | None = None,
                 reply_timeout: float = _REPLY_TIMEOUT, **options: Any) -> None:
        self.scheme = _scheme(url)
        self.codec = get_codec(codec)
        self._plain = self.codec is _BYTES  # bytes in, bytes out: no codec call per message
        self.reply_timeout = Deadline.of(reply_timeout).timeout or _REPLY_TIMEOUT
        self._lock = threading.Lock()
        self._conns: list[Channel] = []
        # connections the last wait() reported readable and not read yet: served before waiting
        # again (one wait per round of ready clients, not per request; and round-robin, fair)
        self._pending: list[Channel] = []
        self._listener: Listener | None = None
        self._requests: Channel | None = None
        self._replies: OrderedDict[bytes, Channel] = OrderedDict()  # return address -> its open reply ring
        if self.scheme == "ring":
            self._requests = open_channel(url, create=create, **options)
            self.url = self._requests.url
        else:
            if create not in (True, False):
                raise InvalidArgument(f"{url}: a {self.scheme} server always listens (create=True or omit it)")
            self._listener = listen(url, **options)
            self.url = self._listener.url
        self._closed = False

    # -- receiving ----------------------------------------------------------------------------------
    def recv(self, *, timeout: float | None = None) -> Request:
        """The next request (``Timeout`` when ``timeout`` runs out)."""
        requests = self._requests
        if timeout is None and requests is not None:  # the common server loop: the channel's untimed fast path
            while True:
                self._check_open("recv")
                got = self._parse(requests.recv(), None)
                if got is not None:
                    return got
        deadline = Deadline.of(timeout)
        while True:
            self._check_open("recv")
            if requests is not None:
                got = self._parse(requests.recv(timeout=deadline.remaining()), None)
                if got is not None:
                    return got
                continue
            got = self._poll_connections(deadline)
            if got is not None:
                return got

    def _poll_connections(self, deadline: Deadline) -> Request | None:
        assert self._listener is not None
        with self._lock:
            ready: list[Any] = self._pending
            self._pending = []
        if not ready:
            with self._lock:
                objs: list[Any] = [self._listener, *(c for c in self._conns if not c.closed)]
            try:
                ready = wait(objs, timeout=deadline.slice(1.0).remaining())
            except ChannelClosed:
                self._check_open("recv")
                return None  # a connection another thread dropped meanwhile: wait again without it
            if not ready:
                if deadline.expired() or deadline.nonblocking:
                    raise deadline.error(f"recv on {self.url}")
                return None  # a slice passed (new connections join the next wait)
        for i, obj in enumerate(ready):
            if obj is self._listener:
                try:
                    conn = self._listener.accept(timeout=0)
                except KipcError:
                    continue  # someone else took it, or a refused peer (its error is the peer's)
                with self._lock:
                    self._conns.append(conn)
                continue
            try:
                data = obj.recv(timeout=0)
            except DeadlineExceeded:
                continue  # another thread took it, or the frame is not complete yet
            except (ChannelClosed, KipcError):
                self._drop(obj)
                continue
            got = self._parse(data, obj)
            if got is not None:
                rest = [c for c in ready[i + 1:] if c is not self._listener]
                if rest:
                    with self._lock:
                        self._pending.extend(rest)
                return got
        return None

    def _drop(self, conn: Channel) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    def _parse(self, msg: bytes, conn: Channel | None) -> Request | None:
        if len(msg) < _REQ.size:
            self.malformed += 1
            return None
        magic, rid, n = _REQ.unpack_from(msg)
        end = _REQ.size + n
        if magic != _REQ_MAGIC or len(msg) < end:
            self.malformed += 1
            return None
        # a ring client's return address stays bytes: the key of the reply-ring cache, checked and
        # decoded once per client (in _reply_channel), not once per request
        to: Any = conn if conn is not None else msg[_REQ.size:end]
        if conn is None and not to.isascii():
            self.malformed += 1
            return None
        try:
            data = msg[end:] if self._plain else self.codec.decode(msg[end:])
        except Exception:
            self.malformed += 1
            return None
        return Request(self, rid, to, data)

    async def arecv(self, *, timeout: float | None = None) -> Request:
        deadline = Deadline.of(timeout)
        while True:
            self._check_open("recv")
            if self._requests is not None:
                got = self._parse(await self._requests.arecv(timeout=deadline.remaining()), None)
            else:
                got = await self._apoll(deadline)
            if got is not None:
                return got

    async def _apoll(self, deadline: Deadline) -> Request | None:
        # The connections' fds with the loop's readiness: accept or receive without blocking it.
        import asyncio

        assert self._listener is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fds = [self._listener.fileno(), *(c.fileno() for c in self._conns)]
        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        for fd in fds:
            loop.add_reader(fd, wake)
        try:
            if not self._pending and not any(c._ready("recv") for c in self._conns):
                await asyncio.wait_for(fut, deadline.slice(1.0).remaining())
        except TimeoutError:
            if deadline.expired():
                raise deadline.error(f"recv on {self.url}") from None
            return None
        finally:
            for fd in fds:
                loop.remove_reader(fd)
        return self._poll_connections(Deadline(0)) if not deadline.expired() else None

    def __iter__(self) -> Iterator[Request]:
        while not self._closed:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    def __aiter__(self) -> AsyncIterator[Request]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Request]:
        while not self._closed:
            try:
                yield await self.arecv()
            except ChannelClosed:
                return

    # -- replying -----------------------------------------------------------------------------------
    def _frame(self, rid: int, data: Any) -> bytes:
        if self._plain and data.__class__ is bytes:
            return _REP.pack(_REP_MAGIC, rid) + data
        return b"".join((_REP.pack(_REP_MAGIC, rid), self.codec.encode(data)))  # one copy of the payload

    def _reply(self, to: Any, rid: int, data: Any, timeout: float | None) -> bool:
        self._check_open("reply")
        frame = self._frame(rid, data)
        t = self.reply_timeout if timeout is None else timeout
        try:
            self._reply_channel(to).send(frame, timeout=t)
            return True
        except (NotFound, ChannelClosed, DeadlineExceeded, PeerGone, InvalidArgument):
            self._forget(to)
            return False  # the client has gone (or stopped reading), or gave an unusable address: dropped

    async def _areply(self, to: Any, rid: int, data: Any, timeout: float | None) -> bool:
        self._check_open("reply")
        frame = self._frame(rid, data)
        t = self.reply_timeout if timeout is None else timeout
        try:
            await self._reply_channel(to).asend(frame, timeout=t)
            return True
        except (NotFound, ChannelClosed, DeadlineExceeded, PeerGone, InvalidArgument):
            self._forget(to)
            return False

    def _reply_channel(self, to: Any) -> Channel:
        if not isinstance(to, bytes):
            return to  # a connection: reply on it
        with self._lock:
            ch = self._replies.get(to)
            if ch is not None:
                self._replies.move_to_end(to)
                return ch
        ch = open_channel(f"ring://{to.decode('ascii')}")  # ASCII: checked in _parse
        with self._lock:
            self._replies[to] = ch
            while len(self._replies) > _CACHE:
                _, old = self._replies.popitem(last=False)
                old.close()
        return ch

    def _forget(self, to: Any) -> None:
        if isinstance(to, bytes):
            with self._lock:
                ch = self._replies.pop(to, None)
            if ch is not None:
                ch.close()
        else:
            self._drop(to)

    # -- lifetime (Resource: idempotent, thread-safe close; with / async with) -------------------------
    def _close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._pending = []
            replies, self._replies = list(self._replies.values()), OrderedDict()
        for ch in [*conns, *replies]:
            ch.close()
        if self._listener is not None:
            self._listener.close()
        if self._requests is not None:
            self._requests.close()  # the creating server's ring is removed by its own close


_client_ids = itertools.count(1)


class Client(Resource):
    """Sends requests to a :class:`Server` and returns their replies; see the module docstring.

    One request at a time per client (calls from several threads are serialised);
    open one client per thread for parallel requests.
    """

    malformed = 0

    def __init__(self, url: str, *, codec: str | Codec | None = None, capacity: int | str = 1 << 16,
                 **options: Any) -> None:
        self.scheme = _scheme(url)
        self.codec = get_codec(codec)
        self._plain = self.codec is _BYTES
        self._lock = threading.Lock()
        self._ids = itertools.count(int.from_bytes(os.urandom(4), "little") << 20)
        self._reply_ring: Channel | None = None
        self._server_owner: tuple[int, int | None] | None = None
        self.url = url
        if self.scheme == "ring":
            self._out = open_channel(url, **options)
            self.url = self._out.url
            name = parse_url(self.url).netloc
            me = f"{name}.r{os.getpid()}x{next(_client_ids)}"[-200:].lstrip(".-")
            try:
                self._reply_ring = open_channel(f"ring://{me}", create=True, capacity=capacity)
            except BaseException:
                self._out.close()
                raise
            self._return = me.encode("ascii")
            rec = _owners.lookup(self.url)
            if rec is not None:
                self._server_owner = (rec.pid, rec.start_time)
            self._in = self._reply_ring
        else:
            self._out = self._in = open_channel(url, **options)
            self._return = b""
        self._closed = False

    def _frame(self, rid: int, data: Any) -> bytes:
        if self._plain and data.__class__ is bytes:
            return _REQ.pack(_REQ_MAGIC, rid, len(self._return)) + self._return + data
        return b"".join((_REQ.pack(_REQ_MAGIC, rid, len(self._return)), self._return, self.codec.encode(data)))

    def _match(self, msg: bytes, rid: int) -> tuple[bool, Any]:
        if len(msg) < _REP.size:
            self.malformed += 1
            return False, None
        magic, got = _REP.unpack_from(msg)
        if magic != _REP_MAGIC:
            self.malformed += 1
            return False, None
        if got != rid:
            return False, None  # a late reply to an earlier request that timed out
        return True, (msg[_REP.size:] if self._plain else self.codec.decode(msg[_REP.size:]))

    def _server_gone(self) -> bool:
        own = self._server_owner
        return own is not None and not _owners.owner_alive(*own)

    def _slice(self, deadline: Deadline) -> float | None:
        """How long one reply wait may last: in slices on a ring, so a dead creating server is noticed."""
        left = deadline.remaining()
        if self._reply_ring is None:
            return left
        return _LIVENESS if left is None or left > _LIVENESS else left

    def _no_reply(self, e: KipcError, deadline: Deadline) -> None:
        """A reply wait ended without a message: raise what it means, or return to wait again."""
        if isinstance(e, ChannelClosed):
            raise PeerGone(f"request on {self.url}: the server closed the connection") from e
        if deadline.expired() or deadline.nonblocking:
            raise deadline.error(f"request on {self.url}") from None
        if self._server_gone():
            raise PeerGone(f"request on {self.url}: the server died") from None

    def request(self, data: Any, *, timeout: float | None = None) -> object:
        """Send ``data`` and return the decoded reply (``Timeout``; ``PeerGone`` if the server died)."""
        deadline = Deadline.of(timeout)
        self._check_open("request")
        with self._lock:
            rid = next(self._ids)
            self._out.send(self._frame(rid, data), timeout=deadline.remaining())
            while True:
                try:
                    msg = self._in.recv(timeout=self._slice(deadline))
                except (ChannelClosed, DeadlineExceeded) as e:
                    self._no_reply(e, deadline)
                    continue
                ok, reply = self._match(msg, rid)
                if ok:
                    return reply

    async def arequest(self, data: Any, *, timeout: float | None = None) -> object:
        """``request`` for asyncio (one at a time per client; cancelled, its late reply is dropped)."""
        deadline = Deadline.of(timeout)
        self._check_open("request")
        rid = next(self._ids)
        await self._out.asend(self._frame(rid, data), timeout=deadline.remaining())
        while True:
            try:
                msg = await self._in.arecv(timeout=self._slice(deadline))
            except (ChannelClosed, DeadlineExceeded) as e:
                self._no_reply(e, deadline)
                continue
            ok, reply = self._match(msg, rid)
            if ok:
                return reply

    def _close(self) -> None:
        self._out.close()
        if self._reply_ring is not None:
            self._reply_ring.close()
