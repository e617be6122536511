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
  server is gone, or closed the ring) or :class:`Timeout` — never a hang with a
  timeout. On ``ring://`` with several servers, a non-creating server dying
  mid-request is noticed only by the client's timeout: give one.
* A reply to a client that died is dropped without harming the server
  (``reply`` returns False). A reply waits at most ``reply_timeout`` (1 s)
  for room in a client's ring, then is dropped. A ring server keeps the reply
  rings of the 64 clients it opened last (``_CACHE``); an older client's ring is
  opened again on its next request.
* Wire format (the codec applies to payloads only): request =
  ``b"KRQ1" u64 id u16 len return-address payload``; reply =
  ``b"KRP1" u64 id payload``. A message that is not one of these is dropped
  and counted in ``server.malformed`` / ``client.malformed``.
* Cleanup: a ring server created with ``create=True`` removes the request
  ring on close; a client removes its reply ring on close (``kipc gc`` after
  SIGKILL, as for every ring).

Speed (``ring://``): the per-message steps — the server's parse and ``Request``,
``Request.reply``'s frame and send, the client's send and wait for its own reply —
are C (``_native/_reqrep.c``), calling the rings' own C send/recv with absolute
deadlines; Python runs once per call around them (timeouts, the client lock, the
liveness check between 0.25 s slices). ``unix://``/``tcp://`` (and a ring opened with
options that need the Channel checks, e.g. ``max_message_size``) go through the
Channel API.

NATS has its own request/reply (``nats://``, core NATS subjects) in the NATS
transport; this module covers one host.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from . import _owners
from ._base import Channel, Deadline, Listener, Resource
from ._naming import parse_url
from ._platform import native
from ._waiting import wait
from .codecs import Codec, get_codec
from .errors import ChannelClosed, DeadlineExceeded, InvalidArgument, KipcError, NotFound, PeerGone
from .registry import listen
from .registry import open as open_channel

__all__ = ["Client", "Request", "Server"]

_BYTES = get_codec(None)
_REQ = struct.Struct("<4sQH")
_REP = struct.Struct("<4sQ")
_LEN = struct.Struct("<H")
_REQ_MAGIC, _REP_MAGIC = b"KRQ1", b"KRP1"
_HDR = _REQ.size  # where a request's return address starts
_rr = native("_reqrep")  # the ring:// hot path in C (see _native/_reqrep.c)
_take, _call = _rr.take, _rr.call
_monotonic = time.monotonic
_TIMEOUT_MAX = threading.TIMEOUT_MAX
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


def _end(timeout: object) -> float | None:
    """``timeout`` validated and made absolute (monotonic seconds; None = never; 0 = now: one attempt).

    The ring fast paths hand this float to the ring's C hooks, which take an absolute deadline
    (``_native/_ring.c``): no :class:`Deadline` object per call on the hot path.
    """
    if timeout is None:
        return None
    cls = timeout.__class__
    if (cls is float or cls is int) and 0 < timeout <= _TIMEOUT_MAX:  # type: ignore[operator]
        return _monotonic() + timeout  # type: ignore[operator]
    return Deadline.of(timeout).end


def _expired(timeout: object, what: str) -> DeadlineExceeded:
    """The error of a call whose (validated) ``timeout`` ran out: WouldBlock for 0, else Timeout."""
    return Deadline(timeout).error(what)  # type: ignore[arg-type]


_RequestBase: Any = _rr.Request  # a C type: see _native/_reqrep.c


class Request(_RequestBase):
    """One request: ``data`` (decoded), ``id``, ``reply(data)``; each request is answered at most once.

    ``reply(data, *, timeout=None) -> bool`` sends the reply; False if the client has gone
    (the reply is dropped). It is C (``_native/_reqrep.c``): on ring:// with the default codec
    it sends there, else it calls :meth:`Server._reply`.
    """

    if not TYPE_CHECKING:
        __slots__ = ()  # no __dict__: the C type's fields are all there is
    # the C type's fields (_native/_reqrep.c), for type checkers
    data: object  # bytes with the default codec, the decoded value with codec= (narrow it)
    server: Server
    id: int  # read-only: the 64-bit id the client gave this request
    _rid: int
    _to: Any
    _replied: bool
    if TYPE_CHECKING:
        def reply(self, data: Any, *, timeout: float | None = None) -> bool: ...

    async def areply(self, data: Any, *, timeout: float | None = None) -> bool:
        if self._replied:
            raise InvalidArgument("this request was already answered")
        self._replied = True
        return await self.server._areply(self._to, self._rid, data, timeout)

    def __repr__(self) -> str:
        return f"<Request {self.id} on {self.server.url}>"


_rr._setup(InvalidArgument, DeadlineExceeded, ChannelClosed, NotFound, Request, _end, _TIMEOUT_MAX, _LIVENESS)


class Server(Resource):
    """Answers requests on ``url``; see the module docstring."""

    malformed = 0
    _recv_raw: Any = None

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
        self._senders: dict[bytes, Any] = {}  # the same -> its C send, for the reply in C (_native/_reqrep.c)
        if self.scheme == "ring":
            self._requests = open_channel(url, create=create, **options)
            self.url = self._requests.url
            if self._requests._plain_recv:
                # the ring's C recv itself, given an absolute deadline (see _end): one C call per request
                self._recv_raw = self._requests._recv_blocking
        else:
            if create not in (True, False):
                raise InvalidArgument(f"{url}: a {self.scheme} server always listens (create=True or omit it)")
            self._listener = listen(url, **options)
            self.url = self._listener.url
        self._closed = False

    # -- receiving ----------------------------------------------------------------------------------
    def recv(self, *, timeout: float | None = None) -> Request:
        """The next request (``Timeout`` when ``timeout`` runs out)."""
        raw = self._recv_raw
        if raw is None:
            return self._recv_connections(Deadline.of(timeout))
        end = None if timeout is None else _end(timeout)
        while True:
            if self._closed:
                self._check_open("recv")
            try:  # the next well-formed request, parsed in C (malformed ones counted there)
                req: Request = _take(self, raw, end, self._senders, self.reply_timeout, self._plain)
            except DeadlineExceeded:
                raise _expired(timeout, f"recv on {self.url}") from None
            if self._plain:
                return req
            try:
                req.data = self.codec.decode(req.data)  # type: ignore[arg-type]  # bytes from C
                return req
            except Exception:
                self.malformed += 1

    def _recv_connections(self, deadline: Deadline) -> Request:
        while True:
            self._check_open("recv")
            if self._requests is not None:  # a ring with a codec on the ring itself: the Channel API
                got = self._parse(self._requests.recv(timeout=deadline.remaining()), None)
            else:
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
        """A request from `msg` (untrusted bytes), or None (counted in ``malformed``)."""
        if msg[:4] == _REQ_MAGIC and len(msg) >= _HDR:
            end = _HDR + (msg[12] | msg[13] << 8)  # the u16 length of the return address
            if len(msg) >= end:
                # a ring client's return address stays bytes: the key of the reply-ring cache, checked
                # and decoded once per client (in _reply_ring), not once per request
                to: Any = conn
                if conn is None:
                    to = msg[_HDR:end]
                    if not to.isascii():
                        self.malformed += 1
                        return None
                rid = int.from_bytes(msg[4:12], "little")
                if self._plain:
                    return Request(self, rid, to, msg[end:])
                try:
                    return Request(self, rid, to, self.codec.decode(msg[end:]))
                except Exception:
                    pass
        self.malformed += 1
        return None

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
        """``Request.reply`` when C does not send it itself (a codec, a connection, a first reply, timeout=)."""
        self._check_open("reply")
        frame = self._frame(rid, data)
        if not isinstance(to, bytes):  # a connection: reply on it
            try:
                to.send(frame, timeout=self.reply_timeout if timeout is None else timeout)
                return True
            except (NotFound, ChannelClosed, DeadlineExceeded, PeerGone, InvalidArgument):
                self._drop(to)
                return False  # the client has gone (or stopped reading): dropped
        return self._send_reply(to, frame, _monotonic() + self.reply_timeout if timeout is None else _end(timeout))

    def _reply_failed(self, to: bytes, frame: bytes, end: float, exc: KipcError) -> bool:
        """C's send of a reply failed with `exc` (ChannelClosed, DeadlineExceeded, NotFound, InvalidArgument)."""
        self._check_open("reply")
        if isinstance(exc, ChannelClosed):
            ch = self._replies.get(to)
            if ch is None or ch.closed:  # another thread evicted (closed) the handle C used: open it again
                return self._send_reply(to, frame, end)
        self._forget(to)
        return False  # the client has gone (closed its ring, stopped reading): dropped

    def _send_reply(self, to: bytes, frame: bytes, end: float | None) -> bool:
        ch: Any = None
        for _ in range(2):
            try:
                ch = self._replies.get(to)
                if ch is None:
                    ch = self._reply_ring(to)
                # the reply ring's C send itself, with the absolute deadline (see _end)
                ch._send_blocking(frame, end, None)
                return True
            except ChannelClosed:
                if self._closed or ch is None or not ch.closed:
                    break  # the client closed its ring (or this server closed): dropped
                # another thread's cache eviction closed our handle under this reply: open it again
            except (NotFound, DeadlineExceeded, InvalidArgument):
                break  # the client has gone, stopped reading, or gave an unusable address: dropped
        self._forget(to)
        return False

    async def _areply(self, to: Any, rid: int, data: Any, timeout: float | None) -> bool:
        self._check_open("reply")
        frame = self._frame(rid, data)
        t = self.reply_timeout if timeout is None else timeout
        try:
            ch = to if not isinstance(to, bytes) else (self._replies.get(to) or self._reply_ring(to))
            await ch.asend(frame, timeout=t)
            return True
        except (NotFound, ChannelClosed, DeadlineExceeded, PeerGone, InvalidArgument):
            self._forget(to)
            return False

    def _reply_ring(self, to: bytes) -> Channel:
        """Open (and cache) the reply ring named by a return address."""
        with self._lock:
            ch = self._replies.get(to)
            if ch is not None:
                return ch
        ch = open_channel(f"ring://{to.decode('ascii')}")  # ASCII: checked in _parse
        with self._lock:
            other = self._replies.get(to)
            if other is not None:  # another thread opened it meanwhile: keep one handle
                ch.close()
                return other
            self._replies[to] = ch
            self._senders[to] = ch._send_blocking
            evicted = []
            while len(self._replies) > _CACHE:  # the oldest opened goes (hits do not reorder: they are C's)
                old_to, old = self._replies.popitem(last=False)
                self._senders.pop(old_to, None)
                evicted.append(old)
        for old in evicted:
            old.close()
        return ch

    def _forget(self, to: Any) -> None:
        if isinstance(to, bytes):
            with self._lock:
                self._senders.pop(to, None)
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
            self._senders = {}
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
    _send_raw: Any = None
    _recv_raw: Any = None

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
            self._head = _LEN.pack(len(self._return)) + self._return  # what follows a request's id
            rec = _owners.lookup(self.url)
            if rec is not None:
                self._server_owner = (rec.pid, rec.start_time)
            self._in = self._reply_ring
            if self._out._plain_send and self._out.max_message_size is None:
                # the rings' C send/recv themselves, given absolute deadlines (see _end)
                self._send_raw, self._recv_raw = self._out._send_blocking, self._in._recv_blocking
        else:
            self._out = self._in = open_channel(url, **options)
            self._return = b""
        self._closed = False

    def _frame(self, rid: int, data: Any) -> bytes:
        if self._plain and data.__class__ is bytes:
            return _REQ.pack(_REQ_MAGIC, rid, len(self._return)) + self._return + data
        return b"".join((_REQ.pack(_REQ_MAGIC, rid, len(self._return)), self._return, self.codec.encode(data)))

    def _match(self, msg: bytes, want: bytes) -> tuple[bool, Any]:
        """(True, the decoded reply) if `msg` answers the request whose reply header is `want`."""
        if msg[:12] == want:
            return True, (msg[12:] if self._plain else self.codec.decode(msg[12:]))
        if len(msg) < _REP.size or msg[:4] != _REP_MAGIC:
            self.malformed += 1
        return False, None  # else a late reply to an earlier request that timed out: dropped

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
        send = self._send_raw
        if send is None or self._closed:
            self._check_open("request")
            return self._request(data, Deadline.of(timeout))
        # ring://: one C call frames and sends the request and waits for its own reply
        # (_native/_reqrep.c), on the rings' C send/recv with absolute deadlines
        payload = data if self._plain and data.__class__ is bytes else self.codec.encode(data)
        lock = self._lock
        if not lock.acquire(False):
            return self._request_contended(payload, timeout)
        try:
            got = _call(self, send, self._recv_raw, self._head, next(self._ids), payload, timeout)
        finally:
            lock.release()
        return got if self._plain else self.codec.decode(got)

    def _request_contended(self, payload: Any, timeout: float | None) -> object:
        """``request`` while another thread's request holds this client: wait for it within ``timeout``."""
        end = _end(timeout)
        if not self._lock.acquire(True, -1 if end is None else max(0.0, end - _monotonic())):
            raise _expired(timeout, f"request on {self.url}")
        try:
            left = None if end is None else max(0.0, end - _monotonic())
            if left == 0.0 and timeout != 0:
                raise _expired(timeout, f"request on {self.url}")
            got = _call(self, self._send_raw, self._recv_raw, self._head, next(self._ids), payload, left)
        finally:
            self._lock.release()
        return got if self._plain else self.codec.decode(got)

    # called by _call (C) on the rare paths
    def _send_failed(self, exc: KipcError, timeout: float | None) -> None:
        """The request could not be sent: the ring stayed full, or it (or this client) was closed."""
        if isinstance(exc, DeadlineExceeded):
            raise _expired(timeout, f"request on {self.url} (the request ring stayed full)") from None
        if self._closed:
            raise exc  # this client was closed (from another thread)
        raise PeerGone(f"request on {self.url}: the server closed its ring") from exc

    def _no_reply_yet(self, timeout: float | None, end: float | None) -> None:
        """A 0.25 s slice passed without the reply: raise Timeout at the deadline, PeerGone if the server died."""
        if end is not None and _monotonic() >= end:
            raise _expired(timeout, f"request on {self.url}")
        if self._server_gone():
            raise PeerGone(f"request on {self.url}: the server died")

    def _request(self, data: Any, deadline: Deadline) -> object:
        """``request`` over the Channel API (unix://, tcp://, a ring with checks of its own)."""
        with self._lock:
            rid = next(self._ids)
            want = _REP.pack(_REP_MAGIC, rid)
            self._out.send(self._frame(rid, data), timeout=deadline.remaining())
            while True:
                try:
                    msg = self._in.recv(timeout=self._slice(deadline))
                except (ChannelClosed, DeadlineExceeded) as e:
                    self._no_reply(e, deadline)
                    continue
                ok, reply = self._match(msg, want)
                if ok:
                    return reply

    async def arequest(self, data: Any, *, timeout: float | None = None) -> object:
        """``request`` for asyncio (one at a time per client; cancelled, its late reply is dropped)."""
        deadline = Deadline.of(timeout)
        self._check_open("request")
        rid = next(self._ids)
        want = _REP.pack(_REP_MAGIC, rid)
        await self._out.asend(self._frame(rid, data), timeout=deadline.remaining())
        while True:
            try:
                msg = await self._in.arecv(timeout=self._slice(deadline))
            except (ChannelClosed, DeadlineExceeded) as e:
                self._no_reply(e, deadline)
                continue
            ok, reply = self._match(msg, want)
            if ok:
                return reply

    def _close(self) -> None:
        self._out.close()
        if self._reply_ring is not None:
            self._reply_ring.close()
