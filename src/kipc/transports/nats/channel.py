"""The JetStream work-queue channel (``nats://host:port/name``), its ``Delivery``, and request/reply.

Contract card — ``nats://host:port/name`` (:class:`NatsChannel`):

* Mechanism: one JetStream stream per channel name (``KIPC_<name>``, subject
  ``kipc.q.<name>``, work-queue retention, file storage by default) and one
  durable pull consumer (``kipc``) shared by every receiver: each message goes
  to exactly one receiver. Names outside ``[A-Za-z0-9-]`` are escaped as ``_XX``.
* Sending (``window=256``): an untimed ``send()`` returns once the message is
  queued for the client and fewer than ``window`` messages are unconfirmed; the
  loop thread publishes and tracks each stored-ack. ``flush(timeout=)`` waits
  until all are stored; ``close()`` flushes (10 s). A message the server refuses
  for good raises at the next ``send``/``flush``/``close`` naming how many;
  one refused for now (stream full) or unanswered (restart, election) is resent
  in order, one at a time, before anything newer, with its ``Nats-Msg-Id`` (the
  stream stores it once within its 2 min duplicate window). A send *with* a
  ``timeout`` (0 included) is confirmed: it waits for the window, then for its
  own stored-ack, and ``Timeout``/``WouldBlock`` means not confirmed.
  ``window=1`` confirms every send, and so does a *bounded* stream (``max_msgs``
  / ``max_bytes`` set): there a message refused as full must not be overtaken
  by later ones that find room. **A crash loses the unconfirmed window**
  (at most ``window`` messages sent since the last confirmation); ``flush()``
  after a batch, or a timed send, gives the one-by-one guarantee back.
* Receiving (``prefetch=256``): ``recv()`` serves from a batch pulled ahead
  (one pull request outstanding, at most ``prefetch`` messages held, only
  while someone receives). Each message is acknowledged as it is handed out
  and the ack is confirmed in the background (retried for most of
  ``ack_wait``): at-least-once — a message never handed out is redelivered,
  one handed out whose ack was not confirmed may be delivered once more.
  ``recv_many(max_n, timeout=)`` hands out what is buffered (at least one).
  ``with ch.receive() as m:`` acknowledges only when the block exits cleanly
  (an exception naks it). A buffered message older than ``ack_wait / 2`` is
  nak'ed instead of handed out; ``close()`` naks every buffered message, so
  other consumers get them at once; after a crash the server redelivers them
  after ``ack_wait`` seconds (default 30).
* Ordering: FIFO per producer while nothing is redelivered or resent.
* Max message: the server's ``max_payload`` (1 MiB by default) minus room for
  kipc's headers; larger -> ``MessageTooLarge`` naming both numbers, before
  anything is published.
* Blocking: ``send`` blocks while the window is full (a full stream or an
  unreachable server keeps it full; the client reconnects); ``recv`` while the
  stream is empty. ``timeout=`` on both; ``timeout=0`` makes one round trip and
  raises ``WouldBlock`` instead of waiting.
* Knobs: none (``type=``/``priority=`` raise ``Unsupported``). Options:
  ``window``, ``prefetch``, ``request_conn="own"|"thread"|"shared"`` (below).
* Request/reply: ``request(obj, timeout=)`` / ``arequest`` on core NATS subject
  ``kipc.r.<name>`` (not stored, not retried); ``requests()`` makes this
  handle a responder (a queue group: each request reaches one responder).
  Which connection a sync ``request`` uses is ``request_conn=`` (round trip
  vs. raw nats-py ``nc.request``, loopback, loaded 2-core box, see docs/nats.md):
  ``"own"`` (the default, 0.97-1.11x): one request connection per handle
  (``_requester``), made at the first sync request, on a private event loop
  run by the requesting threads themselves (no thread crossing; several at
  once: one runs it, the others' requests are posted to it and they wait for
  their own replies; a watchdog runs it while nobody requests); a request
  with under 0.1 s left, one made while another thread connects, or one
  after a failed connect (retried after 5 s) goes the shared way.
  ``"thread"`` (1.04-1.16x): the calling thread's own connection and private
  event loop (``_direct``: one per thread, at most 16 per handle, made on its
  second request, closed with the handle, or once its thread has ended and
  another thread opens one); a connection found dropped after sitting idle
  (checked before anything is published on it) takes the shared path.
  On both the caller publishes and reads its reply itself, as raw nats-py
  does; a failure there is reported, never retried. ``"shared"`` (1.22-1.32x;
  no connection beyond the handle's, for servers whose limits, auth callouts
  or monitoring count connections), a thread that runs an event loop and a
  thread past the cap take the shared path:
  the request is published with a reply subject on this handle's reply inbox
  (token ``r<n>``) in the loop iteration the caller's kick wakes
  (``_mailbox.Express``: no task, event or future on the way out), and the
  caller waits on its own lock for the answer: one crossing each way. An
  ``arequest`` takes the shared path, waiting on a future of the caller's
  loop with its timeout a timer there; cancelled at its one await, it leaves
  nothing pending (the request may still reach a responder). A ``close()``
  from another thread ends any of them with ``ChannelClosed``; a reply after
  its timeout is dropped. A responder (``requests()``) has its own connection
  and private loop, run by the thread in ``next()`` (``_responder``: no thread
  crossing; a watchdog runs it while a handler works); ``requests(conn="shared")``
  uses this handle's connection, its replies going out through the Express.
* Threads: one asyncio loop thread per process drives the connection (started
  lazily, stopped at exit; a forked child starts its own and refuses the
  parent's channels). Callers hand work to it in batches (``_mailbox``) and
  take received messages from a buffer on their own thread, so there is no
  thread hop per message. ``asend``/``arecv`` wait without consuming:
  cancelled, an ``arecv`` has taken nothing and an ``asend`` has queued nothing;
  a confirmed ``asend`` cancelled while its publish is on the wire finishes it
  and returns normally (the loop thread decides, so the answer is exact).
  ``close()`` from any thread wakes blocked senders and receivers.
* Cleanup: the creator (``create=True``, or ``"if_missing"`` when it was
  missing) deletes the stream on ``close()`` unless ``persist=True``. Nothing
  local is created, so there is no owner record.
* Security: ``user``/``password``, ``token``, ``creds`` (a .creds file),
  ``nkeys_seed``, ``tls_ca``/``tls_cert``/``tls_key``/``tls_hostname`` or a
  ready ``tls=`` SSLContext are passed to nats-py; nothing is hard-coded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js import api
from nats.nuid import NUID

from ..._base import ASYNC_SLICE, FOREVER, Channel, Deadline
from ..._kinds import RemoteKind
from ..._naming import (
    ParsedURL,
    merge_query,
    parse_bool,
    parse_url,
)
from ..._objects import parse_create
from ...codecs import Codec
from ...errors import (
    AlreadyExists,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    MessageTooLarge,
    NotFound,
    Timeout,
    WouldBlock,
)
from . import _direct
from ._cancel import _uncancellable_publish
from ._client import _Client, _common_options, _escape, _float_opt, _int_opt, _remove_retrying, _split_url, _translate
from ._mailbox import Express, Mailbox, Pump
from ._requester import Requester
from ._responder import Responder

T = TypeVar("T")

__all__ = ["KIND", "Delivery", "NatsChannel", "Request", "Requests"]

_CONSUMER = "kipc"
_PULL_SLICE = 1.0  # longest single pull request: bounds how long a restart goes unnoticed
_RTT_GRACE = 0.25  # wait this long past a pull request's expiry for the server's answer
_NONBLOCK_RTT = 2.0  # timeout=0 still needs one round trip; this bounds it
_FULL_ERRORS = (10077, 10047)  # maximum messages / maximum bytes exceeded (discard new)
_HEADER_ROOM = 128  # bytes of max_payload kept for "NATS/1.0", Nats-Msg-Id and Nats-Expected-Stream
_PUB_WAIT = 2.0  # a pipelined publish unanswered this long is resent (same Nats-Msg-Id)
_ACK_RETRY = 1.0  # an ack unconfirmed this long is sent again (acks are idempotent)
_CLOSE_FLUSH = 10.0  # close() waits this long for the window's confirmations
_CLOSE_ACKS = 5.0  # ... and this long for the acks of messages already handed out
_INF = float("inf")
_GONE_CONFIRM = 3.0  # "stream not found" for this long (not a leader election): it was removed
_REQUEST_FOREVER = 365 * 86400.0  # request(timeout=None): nats-py wants a number
_CONN_RETRY = 5.0  # a thread that could not get its own connection asks again after this long
_MAX_THREAD_CONNS = 16  # more requesting threads than this share the loop thread's connection
_SHARED = object()  # _thread_request: take the shared path


# -- the work-queue channel ------------------------------------------------------------------
@dataclass(slots=True)
class _Pub:
    """One pipelined publish: the same Nats-Msg-Id on every retry, so the stream stores it once."""

    data: bytes
    seq: int = 0
    msgid: str = ""
    sent: float = 0.0
    epoch: int = 0  # the client's reconnect count when it was published


class _ReplyWait:
    """A sync request() waiting for its reply: the loop thread fills it and releases ``lock``.

    Whoever pops it from ``_reply_waits`` (the loop thread with the reply, the caller on its
    timeout, ``close()``) is the only one to finish it: the pop is atomic, so a late reply
    never reaches a caller that already gave up.
    """

    __slots__ = ("data", "error", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()  # held until the reply (or an error) is in
        self.data = b""
        self.error: KipcError | None = None

    def done(self, data: bytes, error: KipcError | None = None) -> None:
        self.data, self.error = data, error
        with contextlib.suppress(RuntimeError):  # already released (close raced the reply)
            self.lock.release()


_TIMED_OUT = object()  # an arequest's timer fired before its reply


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if not fut.done():  # done: cancelled or timed out first
        if error is None:
            fut.set_result(value)
        else:
            fut.set_exception(error)


class _AsyncReplyWait:
    """An arequest() waiting for its reply on the caller's loop (any loop, any thread)."""

    __slots__ = ("fut", "here", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], here: bool) -> None:
        self.loop, self.fut, self.here = loop, fut, here  # here: the caller's loop is the client's

    def done(self, data: bytes, error: KipcError | None = None) -> None:
        if self.here:
            _settle(self.fut, data, error)
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                self.loop.call_soon_threadsafe(_settle, self.fut, data, error)


class NatsChannel(_Client, Channel):
    """A JetStream work-queue channel (see the module docstring)."""

    scheme = "nats"
    _sub: Any = None
    _reply_sub: Any = None
    _pump: Pump | None = None
    _express: Express | None = None
    _ticker: asyncio.Task[None] | None = None
    _checker: asyncio.Task[None] | None = None
    _gone_since = 0.0  # when the stream was first reported missing (0: it is there)
    _window = 1
    _prefetch = 1
    #: the stream has max_msgs/max_bytes: sends are confirmed one at a time (no window), since a
    #: message refused as full must not be overtaken by later ones that find room
    _bounded = False

    def __init__(self, url: str, *, create: bool | str = False, persist: bool | str = False,
                 codec: str | Codec | None = None, servers: str | list[str] | None = None,
                 ack_wait: float | str = 30.0, max_msgs: int | str | None = None,
                 max_bytes: int | str | None = None, max_deliver: int | str | None = None,
                 replicas: int | str = 1, storage: str = "file", window: int | str = 256,
                 prefetch: int | str = 256, request_conn: str = "own", **conn: Any) -> None:
        parsed = parse_url(url)
        server, name, creds = _split_url(parsed, ("nats",))
        create = parse_create(create)
        self.persist = parse_bool(persist, what="persist")
        if storage not in ("file", "memory"):
            raise InvalidArgument(f"{url}: storage must be 'file' or 'memory', not {storage!r}")
        self._ack_wait = _float_opt(ack_wait, "ack_wait")
        limits = {"max_msgs": max_msgs, "max_bytes": max_bytes}
        self._limits: dict[str, Any] = {k: _int_opt(v, k) for k, v in limits.items() if v is not None}
        self._max_deliver = _int_opt(max_deliver, "max_deliver") if max_deliver is not None else -1
        self._replicas = _int_opt(replicas, "replicas")
        self._storage = api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY
        if request_conn not in ("own", "thread", "shared"):
            raise InvalidArgument(f"{url}: request_conn must be 'own', 'thread' or 'shared', not {request_conn!r}")
        self._thread_requests = request_conn == "thread"
        self._own_requests = request_conn == "own"
        self._requester: Requester | None = None  # request_conn="own": made at the first sync request
        self._requester_lock = threading.Lock()  # held while it is being made
        self._requester_retry = 0.0  # it could not be made: no new attempt before this (monotonic)
        self._conns: list[_direct.ThreadConn] = []  # the requesting threads' own connections
        self._conns_lock = threading.Lock()
        self._my_conn = threading.local()  # .conn: this thread's
        self._responders: weakref.WeakSet[Responder] = weakref.WeakSet()  # requests(conn="own")
        self._window = _int_opt(window, "window")
        self._prefetch = _int_opt(prefetch, "prefetch")
        self.url = f"{server}/{name}"
        self.name = name
        self.stream = f"KIPC_{_escape(name)}"
        self.subject = f"kipc.q.{_escape(name)}"
        self._req_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{_CONSUMER}"
        #: core NATS subject of request()/requests() (no JetStream, no storage)
        self.request_subject = f"kipc.r.{_escape(name)}"
        self._replyq: deque[tuple[str, bytes]] = deque()  # responders' replies, published by the pump
        # sync request(): (token, data) published by the pump; the reply comes to our reply inbox
        self._reqq: deque[tuple[str, bytes]] = deque()
        self._reply_waits: dict[str, _ReplyWait | _AsyncReplyWait] = {}
        conn_options = _common_options(conn)
        if conn:
            raise TypeError(f"nats channel got unexpected options {sorted(conn)}")
        # -- send window (callers append to _outq; the loop publishes and tracks replies) --
        self._outq: deque[_Pub] = deque()
        self._pubs: dict[str, _Pub] = {}  # published, awaiting the stored-ack; insertion = send order
        self._retry: list[_Pub] = []  # unanswered or refused-for-now: resent in order, one by one
        self._resender: asyncio.Task[None] | None = None
        self._room = threading.Condition(threading.Lock())
        self._room_sig = Mailbox()  # async senders waiting for room
        self._unconfirmed = 0  # handed to send() and not yet confirmed or failed (<= window)
        self._send_error: KipcError | None = None
        self._failed = 0
        self._unsent: list[bytes] = []
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        # -- receive side (the loop fills _buf from pull requests; callers take from it) --
        self._buf = Mailbox()
        self._low = max(1, self._prefetch // 4)  # refill below this many buffered messages
        self._stale = self._ack_wait / 2  # a buffered message older than this is handed back, not out
        self._ackq: deque[str] = deque()
        self._nakq: deque[str] = deque()
        self._acks: dict[str, list[Any]] = {}  # token -> [ack subject, first sent, last sent]
        self._pull_left = 0  # messages the outstanding pull request may still deliver (0: none out)
        self._pull_expires = 0.0
        self._pull_nowait = False
        self._nowait_wanted = False
        self._nowait_done = 0  # no_wait pulls answered so far
        self._demand = 0.0  # monotonic time a receiver last asked for messages
        self._backoff_until = 0.0
        self._fatal: KipcError | None = None
        self._connect(servers, server, creds, **conn_options)
        try:
            self.owner = self._run(self._setup(create))
        except BaseException:
            self._disconnect()
            raise
        self.max_message_size = max(0, self.max_payload - _HEADER_ROOM - len(self.stream))
        self._init_channel(self.url, codec=codec)

    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> NatsChannel:
        return cls(parsed.url.split("?", 1)[0], **merge_query(parsed, options))

    # -- setup -------------------------------------------------------------------------------
    async def _setup(self, create: bool | str) -> bool:
        js = self._nc.jetstream()
        self._js = js
        self._nuid = NUID()  # Nats-Msg-Id: unique per message (used on the loop thread only)
        created = False
        try:
            exists = True
            try:
                info = await js.stream_info(self.stream)
                cfg = info.config
                self._bounded = any(v not in (None, -1, 0) for v in (cfg.max_msgs, cfg.max_bytes))
            except nats.js.errors.NotFoundError:
                exists = False
                self._bounded = bool(self._limits)
            if exists and create is True:
                raise AlreadyExists(f"create {self.url}: stream {self.stream} already exists")
            if not exists and create is False:
                raise NotFound(f"open {self.url}: no stream {self.stream} on the server (create=True makes it)")
            if not exists:
                await js.add_stream(api.StreamConfig(
                    name=self.stream, subjects=[self.subject], retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=self._storage, num_replicas=self._replicas, discard=api.DiscardPolicy.NEW,
                    **self._limits))
                created = True
            try:
                await js.consumer_info(self.stream, _CONSUMER)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(self.stream, api.ConsumerConfig(
                    durable_name=_CONSUMER, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self._ack_wait,
                    max_deliver=self._max_deliver, max_ack_pending=-1, num_replicas=self._replicas))
            # Our own inboxes: pull responses on one, replies to our publishes and acks on the other.
            self._deliver = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(self._deliver, cb=self._on_pulled)
            self._reply_prefix = self._nc.new_inbox()
            self._reply_dot = self._reply_prefix + "."
            self._reply_sub = await self._nc.subscribe(self._reply_prefix + ".*", cb=self._on_reply)
            self._pump = Pump(asyncio.get_running_loop(), self._drain)
            self._pump.start()
            self._express = Express(asyncio.get_running_loop(), self._send_now)
            self._ticker = asyncio.ensure_future(self._tick())
        except BaseException as e:
            if created:
                with contextlib.suppress(Exception):
                    await js.delete_stream(self.stream)
            raise _translate(e, self.url, "open") from (None if isinstance(e, KipcError) else e)
        return created

    # -- the loop side: one drain for everything callers queued --------------------------------
    async def _send_now(self) -> None:
        """Requests and replies someone waits for (the Express runs this eagerly; drains too)."""
        nc = self._nc
        if nc is None:
            return
        while self._reqq:
            token, data = self._reqq.popleft()
            try:
                await nc.publish(self.request_subject, data, reply=self._reply_dot + token)
            except nats.errors.Error as e:
                w = self._reply_waits.pop(token, None)
                if w is not None:
                    w.done(b"", _translate(e, self.url, "request on"))
        while self._replyq:
            subject, data = self._replyq.popleft()
            with contextlib.suppress(nats.errors.Error):  # at most once, like any core NATS reply
                await nc.publish(subject, data)

    async def _drain(self) -> None:
        nc = self._nc
        if nc is None:
            return
        await self._send_now()
        while self._ackq:
            subject = self._ackq.popleft()
            token = f"a{next(self._tokens)}"
            now = time.monotonic()
            self._acks[token] = [subject, now, now]
            await nc.publish(subject, b"+ACK", reply=f"{self._reply_prefix}.{token}")
        while self._nakq:
            await nc.publish(self._nakq.popleft(), b"-NAK")
        await self._maybe_pull()
        if self._retry:
            if not self._pubs and (self._resender is None or self._resender.done()):
                self._resender = asyncio.ensure_future(self._resend())
            return  # nothing new overtakes a message being resent
        epoch = nc.stats["reconnects"]
        if self._pubs and any(p.epoch != epoch for p in self._pubs.values()):
            # published before a reconnect: their answers are lost with the old connection. Resend
            # them (in order, same ids) before anything newer, or a newer one could be stored first.
            self._retry.extend(self._pubs.values())
            self._pubs.clear()
            self._pump_kick()
            return
        while self._outq:
            if not nc.is_connected:
                return  # nats-py would buffer it; the ticker kicks again once reconnected
            p = self._outq.popleft()
            if not p.msgid:
                p.seq = next(self._seq)
                p.msgid = self._nuid.next().decode()
            token = f"p{next(self._tokens)}"
            p.sent = time.monotonic()
            p.epoch = epoch
            self._pubs[token] = p
            try:
                await nc.publish(self.subject, p.data, reply=f"{self._reply_prefix}.{token}",
                                 headers={"Nats-Msg-Id": p.msgid, "Nats-Expected-Stream": self.stream})
            except nats.errors.OutboundBufferLimitError:
                del self._pubs[token]
                self._outq.appendleft(p)
                return
            except nats.errors.ConnectionClosedError:
                del self._pubs[token]
                self._fail(p, "connection closed")

    async def _on_reply(self, msg: Any) -> None:
        token = msg.subject.rpartition(".")[2]
        if token[:1] == "a":
            self._acks.pop(token, None)
            return
        if token[:1] == "r":
            w = self._reply_waits.pop(token, None)
            if w is not None:  # None: that request already timed out
                status = msg.headers.get("Status") if msg.headers else None
                if status == "503":
                    w.done(b"", self._no_responder())
                else:
                    w.done(msg.data if type(msg.data) is bytes else bytes(msg.data))
            return
        p = self._pubs.pop(token, None)
        if p is None:
            return  # a late answer to a publish already handed to the resender
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:  # 503 no responders: JetStream away (restart, election) -> retry
            self._retry.append(p)
            self._pump_kick()
            return
        try:
            resp = json.loads(msg.data)
        except ValueError:
            resp = {"error": {"description": f"unreadable reply {msg.data[:80]!r}", "err_code": 0}}
        err = resp.get("error")
        if err is None:
            self._release(1)
        elif err.get("err_code") in _FULL_ERRORS:
            self._retry.append(p)  # the stream is full: resent (in order) until there is room
            self._pump_kick()
        else:
            self._fail(p, f"JetStream refused: {err.get('description')} (err_code {err.get('err_code')})")

    def _pump_kick(self) -> None:
        if self._pump is not None:
            self._pump.kick()

    def _express_kick(self) -> None:
        if self._express is not None:
            self._express.kick()

    def _release(self, n: int) -> None:
        with self._room:
            self._unconfirmed -= n
            self._room.notify_all()
        if self._room_sig.waiting:
            self._room_sig.wake()

    def _fail(self, p: _Pub, why: str) -> None:
        """A publish the server definitely did not store (it answered no): reported, never retried.

        Messages whose fate is unknown (no answer) are never reported here: they are resent
        with their Nats-Msg-Id until confirmed, so the stream stores each once.
        """
        self._failed += 1
        self._unsent.append(p.data)
        err = KipcError(
            f"send on {self.url}: {self._failed} message(s) sent without a timeout were not stored: {why} "
            "(the server refused them, so sending them again cannot duplicate them; they are in .unsent)")
        err.unsent = list(self._unsent)  # type: ignore[attr-defined]
        self._send_error = err
        self._release(1)

    async def _resend(self) -> None:
        """Resend, oldest first and one at a time, what was refused or unanswered; then resume the window."""
        self._retry.sort(key=lambda p: p.seq)
        while self._retry:
            p = self._retry[0]
            try:
                await self._publish(p.data, FOREVER, msgid=p.msgid)
            except asyncio.CancelledError:
                raise
            except KipcError as e:
                self._retry.pop(0)
                self._fail(p, str(e))
                continue
            except Exception as e:
                self._retry.pop(0)
                self._fail(p, str(e) or type(e).__name__)
                continue
            self._retry.pop(0)
            self._release(1)
        self._pump_kick()

    async def _tick(self) -> None:
        """Timers: unanswered publishes and acks are retried, a lost pull request is replaced."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            late = [t for t, p in self._pubs.items() if now - p.sent > _PUB_WAIT]
            for t in late:
                self._retry.append(self._pubs.pop(t))
            give_up = max(1.0, 0.8 * self._ack_wait)
            nc = self._nc
            for token, entry in list(self._acks.items()):
                if now - entry[2] < _ACK_RETRY:
                    continue
                if now - entry[1] > give_up:
                    del self._acks[token]  # still unconfirmed: at-least-once keeps the message
                elif nc is not None and nc.is_connected:
                    entry[2] = now
                    with contextlib.suppress(Exception):
                        await nc.publish(entry[0], b"+ACK", reply=f"{self._reply_prefix}.{token}")
            if self._pull_left and now > self._pull_expires + _RTT_GRACE:
                self._pull_finished()  # the answer was lost (server restart, election): pull again
            if late or self._outq or self._retry or self._pubs or self._pull_left == 0:
                self._pump_kick()

    # -- the loop side: pull requests ------------------------------------------------------------
    async def _maybe_pull(self) -> None:
        if self._pull_left or self._fatal is not None or self._nc is None:
            return
        now = time.monotonic()
        if now < self._backoff_until:
            return
        nowait = self._nowait_wanted
        if not nowait and not (self._buf.waiting or now - self._demand < 0.2):
            return  # nobody asks: leave the messages to other consumers
        n = self._prefetch - len(self._buf)
        if n <= 0:
            if nowait:
                self._nowait_wanted = False
                self._nowait_done += 1
                self._buf.wake()
            return
        if nowait:
            self._nowait_wanted = False
            self._pull_nowait = True
            req: dict[str, Any] = {"batch": n, "no_wait": True}
            self._pull_expires = now + _NONBLOCK_RTT - _RTT_GRACE
        else:
            req = {"batch": n, "expires": int(_PULL_SLICE * 1e9)}
            self._pull_expires = now + _PULL_SLICE
        self._pull_left = n
        try:
            await self._nc.publish(self._req_subject, json.dumps(req).encode(), reply=self._deliver)
        except nats.errors.ConnectionClosedError:
            self._fatal = ChannelClosed(f"recv on {self.url}: connection closed")
            self._pull_finished()
        except nats.errors.OutboundBufferLimitError:
            self._backoff_until = now + 0.05
            self._pull_finished()

    async def _on_pulled(self, msg: Any) -> None:
        hdrs = msg.headers
        status = hdrs.get("Status") if hdrs else None
        if status is None:
            if msg.reply:
                self._buf.put((msg, time.monotonic()))
            if self._pull_left:
                self._pull_left -= 1
                if self._pull_left == 0:
                    self._pull_finished()
            return
        if status == "100":
            return  # heartbeat / flow control
        desc = (hdrs.get("Description") or "") if hdrs else ""
        if status == "503" or (status == "409" and "Deleted" in desc):
            # no responders (JetStream restarting / electing, or the stream is gone), or "Consumer
            # Deleted" (also seen when a cluster moves the consumer): ask whether it really is gone
            self._backoff_until = time.monotonic() + 0.05
            if self._checker is None or self._checker.done():
                self._checker = asyncio.ensure_future(self._check_stream(f"recv on {self.url}"))
        elif status == "409":
            self._backoff_until = time.monotonic() + 0.05
        self._pull_finished()  # 404/408 (nothing within the expiry) and the above: this request is over

    def _pull_finished(self) -> None:
        self._pull_left = 0
        if self._pull_nowait:
            self._pull_nowait = False
            self._nowait_done += 1
        self._buf.wake()  # waiting receivers look again (and ask for the next pull)
        self._pump_kick()

    async def _check_stream(self, what: str) -> None:
        """ChannelClosed once the stream (or its consumer) is gone; quiet while the server is away.

        "Not found" counts only when it persists: while a cluster elects a new leader for a
        stream that lost its leader, the API can answer "not found" for a few seconds.
        """
        try:
            # the stream, not the consumer: a consumer whose leader is unreachable is "not found" too
            await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            now = time.monotonic()
            if not self._gone_since:
                self._gone_since = now
            elif now - self._gone_since >= _GONE_CONFIRM:
                self._fatal = ChannelClosed(f"{what}: the stream was removed")
                self._buf.wake()
            return
        except Exception:
            return  # not answering: a restart or an election; keep pulling until the deadline
        self._gone_since = 0.0

    # -- send ------------------------------------------------------------------------------
    def _take_send_error(self) -> None:
        err = self._send_error
        if err is not None:
            self._send_error = None
            self._failed = 0
            self._unsent = []
            raise err

    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        self._take_send_error()
        if deadline.end == _INF and self._window > 1 and not self._bounded:
            # pipelined: returns once the message is queued for the client and the window has room
            room = self._room
            with room:
                while self._unconfirmed >= self._window:
                    self._check_open("send")
                    room.wait(0.05)
                self._unconfirmed += 1
            self._outq.append(_Pub(data if type(data) is bytes else bytes(data)))
            self._pump_kick()
            return
        self._run(self._confirmed_send(bytes(data), deadline))

    async def _confirmed_send(self, data: bytes, deadline: Deadline, started: list[bool] | None = None) -> None:
        """A send with a deadline: after everything in the window, confirmed by the stream within it."""
        while self._unconfirmed:
            if deadline.expired() or (deadline.nonblocking and self._unconfirmed):
                n = self._unconfirmed
                raise deadline.error(f"send on {self.url} ({n} earlier message(s) still unconfirmed)")
            await asyncio.sleep(0.001)
        await self._publish(data, deadline, started=started)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far is stored (confirmed by the stream).

        ``Timeout`` names how many are still unconfirmed: they stay in the window
        and kipc keeps retrying them (same Nats-Msg-Id), so calling ``flush`` again
        is safe. A message the server refused raises here (or at the next send).
        """
        deadline = Deadline.of(timeout)
        self._check_pid("flush on")
        with self._room:
            while self._unconfirmed > 0:
                self._check_open("flush")
                if deadline.expired():
                    raise Timeout(f"flush on {self.url}: {self._unconfirmed} message(s) not confirmed within "
                                  f"{deadline.timeout:g} s (still being retried)")
                self._room.wait(deadline.slice().remaining())
        self._take_send_error()

    async def aflush(self, timeout: float | None = None) -> None:
        deadline = Deadline.of(timeout)
        self._check_pid("flush on")
        while self._unconfirmed > 0:
            self._check_open("flush")
            if deadline.expired():
                raise Timeout(f"flush on {self.url}: {self._unconfirmed} message(s) not confirmed within "
                              f"{deadline.timeout:g} s (still being retried)")
            await self._room_sig.await_(deadline.slice().remaining())
        self._take_send_error()

    @property
    def unconfirmed(self) -> int:
        """Messages sent and not yet confirmed by the stream (at most ``window``)."""
        return self._unconfirmed

    async def _publish(self, data: bytes, deadline: Deadline, *, msgid: str | None = None,
                       started: list[bool] | None = None) -> None:
        headers = {"Nats-Msg-Id": msgid or self._nuid.next().decode()}
        what = f"send on {self.url}"
        delay = 0.005
        checked = 0.0
        while True:
            rem = deadline.remaining()
            t = _NONBLOCK_RTT if deadline.nonblocking else min(2.0, rem if rem is not None else 2.0)
            if t <= 0:
                raise deadline.error(what)
            try:
                if not self._nc.is_connected:
                    # nats-py would buffer the publish and flush it on reconnect, after we may have
                    # reported a Timeout: wait for the connection instead
                    raise nats.errors.TimeoutError
                # the same Nats-Msg-Id on every retry: a retry after a lost ack is stored once
                if started is not None:
                    started[0] = True  # from here on the message may reach the server (see _cancel)
                await self._js.publish(self.subject, data, timeout=t, stream=self.stream, headers=dict(headers))
                return
            except nats.js.errors.APIError as e:
                if e.err_code not in _FULL_ERRORS:
                    raise _translate(e, self.url, "send on") from e
                if started is not None:
                    started[0] = False  # refused: not stored, so a cancellation now sends nothing
                if deadline.nonblocking:
                    raise WouldBlock(f"{what}: the stream is full ({e.description})") from None
            except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError):
                if time.monotonic() - checked > 1.0:  # the stream may be gone for good
                    checked = time.monotonic()
                    await self._check_stream(what)
                    if self._fatal is not None:
                        raise self._fatal from None
            except (nats.errors.TimeoutError, nats.errors.OutboundBufferLimitError):
                pass  # server restarting / reconnecting / leader election: retry until the deadline
            except nats.errors.ConnectionClosedError:
                raise ChannelClosed(f"{what}: connection closed") from None
            if deadline.nonblocking:
                raise WouldBlock(f"{what}: no answer from the server within {_NONBLOCK_RTT:g} s")
            rem = deadline.remaining()
            if rem is not None and rem <= 0:
                raise deadline.error(what)
            await asyncio.sleep(min(delay, rem if rem is not None else delay))
            delay = min(delay * 2, 0.1)

    # -- recv ------------------------------------------------------------------------------
    def _take_buffered(self) -> Any:
        """A buffered message to hand out now, or None (stale ones are handed back)."""
        buf = self._buf
        while True:
            item = buf.take()
            if item is None:
                if self._fatal is not None:
                    raise self._fatal
                return None
            msg, at = item
            now = time.monotonic()
            if now - at > self._stale:
                # waited here so long the server may redeliver it elsewhere: give it back, do not hand it out
                self._nakq.append(msg.reply)
                self._pump_kick()
                continue
            if len(buf) < self._low and not self._pull_left:
                self._demand = now
                self._pump_kick()  # refill before the buffer runs dry
            return msg

    def _ask(self) -> None:
        self._demand = time.monotonic()
        if not self._pull_left:
            self._pump_kick()

    def _next_msg(self, deadline: Deadline) -> Any:
        """The next message (not acknowledged): from the buffer, else wait for the next pull."""
        self._check_pid("recv on")
        if deadline.nonblocking:
            return self._next_msg_nowait()
        buf = self._buf
        while True:
            msg = self._take_buffered()
            if msg is not None:
                return msg
            self._check_open("recv")
            if deadline.expired():
                raise deadline.error(f"recv on {self.url}")
            self._ask()
            buf.wait(deadline.slice().remaining())

    def _next_msg_nowait(self) -> Any:
        end = time.monotonic() + _NONBLOCK_RTT
        mark = -1
        while True:
            msg = self._take_buffered()
            if msg is not None:
                return msg
            self._check_open("recv")
            if mark < 0:
                mark = self._nowait_done
                self._nowait_wanted = True
                self._pump_kick()
            elif self._nowait_done != mark:
                raise WouldBlock(f"recv on {self.url}: the channel is empty")
            rem = end - time.monotonic()
            if rem <= 0:
                raise WouldBlock(f"recv on {self.url}: no answer from the server within {_NONBLOCK_RTT:g} s")
            self._buf.wait(min(ASYNC_SLICE, rem))

    async def _anext_msg(self, deadline: Deadline) -> Any:
        self._check_pid("recv on")
        end = time.monotonic() + _NONBLOCK_RTT if deadline.nonblocking else deadline.end
        mark = -1
        while True:
            msg = self._take_buffered()
            if msg is not None:
                return msg
            self._check_open("recv")
            if deadline.nonblocking:
                if mark < 0:
                    mark = self._nowait_done
                    self._nowait_wanted = True
                    self._pump_kick()
                elif self._nowait_done != mark:
                    raise WouldBlock(f"recv on {self.url}: the channel is empty")
                if time.monotonic() >= end:
                    raise WouldBlock(f"recv on {self.url}: no answer from the server within {_NONBLOCK_RTT:g} s")
            elif deadline.expired():
                raise deadline.error(f"recv on {self.url}")
            else:
                self._ask()
            # waiting consumes nothing: a cancellation here leaves every message in the buffer
            await self._buf.await_(min(ASYNC_SLICE, max(0.0, end - time.monotonic())))

    def _hand_out(self, msg: Any) -> bytes:
        self._ackq.append(msg.reply)  # acknowledged now, confirmed in the background
        self._pump_kick()
        return msg.data if type(msg.data) is bytes else bytes(msg.data)

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        return self._hand_out(self._next_msg(deadline))

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """Between 1 and ``max_n`` messages: waits (up to ``timeout``) for the first, then takes what is here."""
        deadline = Deadline.of(timeout)
        n = _int_opt(max_n, "max_n")
        self._prepare_recv({})
        out = [self._hand_out(self._next_msg(deadline))]
        while len(out) < n:
            msg = self._take_buffered()
            if msg is None:
                break
            out.append(self._hand_out(msg))
        decode = self.codec.decode
        return [decode(d) for d in out]

    async def arecv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        deadline = Deadline.of(timeout)
        n = _int_opt(max_n, "max_n")
        self._prepare_recv({})
        out = [self._hand_out(await self._anext_msg(deadline))]
        while len(out) < n:
            msg = self._take_buffered()
            if msg is None:
                break
            out.append(self._hand_out(msg))
        decode = self.codec.decode
        return [decode(d) for d in out]

    def fileno(self) -> int:
        self._check_open("fileno")
        return super().fileno()  # Unsupported: the socket belongs to the loop thread

    def receive(self, *, timeout: float | None = None) -> Delivery:
        """The next message, acknowledged when its ``with`` block exits cleanly (or by ``.ack()``)."""
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        return Delivery(self, self._next_msg(deadline))

    async def areceive(self, *, timeout: float | None = None) -> Delivery:
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        return Delivery(self, await self._anext_msg(deadline))

    async def _ack(self, msg: Any, deadline: Deadline) -> None:
        """Acknowledge and wait for the server's confirmation (retried: a lost ack would redeliver).

        Acks are idempotent, so retrying is safe; it goes on for most of ``ack_wait``
        (a leader election can take seconds), since past that the server redelivers anyway.
        """
        give_up = time.monotonic() + max(1.0, 0.8 * self._ack_wait)
        while True:
            try:
                await msg.ack_sync(timeout=1.0)
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if time.monotonic() >= give_up:
                    break
                await asyncio.sleep(0.05)
        # Still unconfirmed: at-least-once keeps the message (it may come back once more).

    def _too_large(self, size: int, limit: int) -> MessageTooLarge:
        return MessageTooLarge(f"send on {self.url}: message of {size} bytes exceeds the limit of {limit} bytes "
                               f"(server max_payload {self.max_payload})", size=size, limit=limit)

    # -- asyncio: the caller's loop takes from the buffer / queues into the window directly -------
    _async_native = True

    async def _asend_native(self, data: memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        self._take_send_error()
        if deadline.end == _INF and self._window > 1 and not self._bounded:
            while True:  # waiting for room sends nothing: a cancellation here has sent nothing
                with self._room:
                    if self._unconfirmed < self._window:
                        self._unconfirmed += 1
                        break
                self._check_open("send")
                await self._room_sig.await_(ASYNC_SLICE)
            self._outq.append(_Pub(bytes(data)))
            self._pump_kick()
            return
        payload = bytes(data)
        await _uncancellable_publish(self, lambda started: self._confirmed_send(payload, deadline, started))

    async def _arecv_native(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        return self._hand_out(await self._anext_msg(deadline))


    # -- request/reply on core NATS (no stream: a responder must be listening) -----------------
    def request(self, obj: Any, *, timeout: float | None = None) -> Any:
        """Send ``obj`` to one responder of this name (``requests()``) and return its reply.

        Core NATS request/reply on ``request_subject``: not stored, not retried (the
        responder may have acted on it). ``NotFound`` when no responder listens,
        ``Timeout`` when none answered in time; ``timeout=0`` allows one round trip.
        """
        data = self._prepare_send(obj, {})
        deadline = Deadline.of(timeout)
        self._check_pid("request on")
        runner = self._runner
        if runner is None or threading.current_thread() is runner.thread or runner.stopped:
            return self.codec.decode(self._run(self._request(bytes(data), deadline)))  # raises the right error
        if self._own_requests:
            got = self._own_request(bytes(data), deadline)
            if got is not _SHARED:
                return self.codec.decode(got)
        elif self._thread_requests:
            got = self._thread_request(bytes(data), deadline)
            if got is not _SHARED:
                return self.codec.decode(got)
        # The shared path. The Express publishes it in the loop iteration that wakes up, with a
        # reply subject on our reply inbox, and _on_reply hands the answer to this thread through a
        # lock: one thread hop each way and no task, future or timer per call (run_coroutine_threadsafe
        # + nc.request cost ~1.5x raw nats-py's round trip; the pump's event and task another loop
        # iteration).
        token = f"r{next(self._tokens)}"
        w = _ReplyWait()
        self._reply_waits[token] = w
        if self._closed:  # close() ran _interrupt before we registered: nobody would wake us
            self._reply_waits.pop(token, None)
            raise ChannelClosed(f"request on {self.url}: closed by this process")
        self._reqq.append((token, bytes(data)))
        self._express_kick()
        try:
            if deadline.nonblocking:
                got = w.lock.acquire(timeout=_NONBLOCK_RTT)
            else:
                rem = deadline.remaining()
                got = w.lock.acquire(timeout=-1 if rem is None else max(rem, 0.0))
        finally:
            self._reply_waits.pop(token, None)
        if not got:
            raise self._no_reply(deadline)
        if w.error is not None:
            raise w.error
        return self.codec.decode(w.data)

    def _own_request(self, data: bytes, deadline: Deadline) -> Any:
        """request() on this handle's own request connection (``_requester``): the reply bytes, or _SHARED."""
        if asyncio._get_running_loop() is not None:
            return _SHARED  # this thread runs an event loop: it cannot run another
        req = self._requester
        if req is None:
            req = self._new_requester(deadline)
            if req is None:
                return _SHARED
        got = req.request(data, Deadline(_NONBLOCK_RTT) if deadline.nonblocking else deadline)
        if got is None:
            raise self._no_reply(deadline)
        return got

    def _new_requester(self, deadline: Deadline) -> Requester | None:
        """Make this handle's request connection; None (take the shared path) if that fails,
        another thread is making it, or the request has no time for a connect."""
        rem = deadline.remaining()
        if deadline.nonblocking or (rem is not None and rem < 0.1) or time.monotonic() < self._requester_retry:
            return None
        if not self._requester_lock.acquire(blocking=False):
            return None  # another thread is connecting: this request goes the shared way meanwhile
        try:
            if self._requester is not None:
                return self._requester
            self._requester_retry = time.monotonic() + _CONN_RETRY  # until it works: one attempt per while
            servers, timeout, kw, dead_after = self._conn_args
            if rem is not None:
                timeout = min(timeout, rem / 2)  # the request keeps half its time for the shared path
            try:
                req = Requester(f"request on {self.url}", self.request_subject,
                                lambda: self._aconnect(servers, timeout, kw, dead_after, shared=False),
                                self._no_responder, lambda e: _translate(e, self.url, "request on"))
            except Exception:
                return None  # the shared connection still works: use it
            with self._conns_lock:
                closed = self._closed
                if not closed:
                    self._requester = req
                    self._requester_retry = 0.0
            if closed:  # close() ran meanwhile: it never saw this one
                req.close()
                return None
            return req
        finally:
            self._requester_lock.release()

    def _thread_request(self, data: bytes, deadline: Deadline) -> Any:
        """request() on this thread's own connection (``_direct``): the reply bytes, or _SHARED."""
        if asyncio._get_running_loop() is not None:
            return _SHARED  # this thread runs an event loop: it cannot run another
        conn: _direct.ThreadConn | None = getattr(self._my_conn, "conn", None)
        if conn is None:
            if not getattr(self._my_conn, "asked", False):
                self._my_conn.asked = True  # a thread's first request goes the shared way: one-off
                return _SHARED  # requests (the CLI's) never pay for a second connection
            conn = self._new_thread_conn(deadline)
            if conn is None:
                return _SHARED
        if not conn.lock.acquire(blocking=False):  # close() is closing it
            raise ChannelClosed(f"request on {self.url}: closed by this process")
        drop = False
        try:
            if conn.doomed:
                raise ChannelClosed(f"request on {self.url}: closed by this process")
            try:
                return conn.run(self._conn_request(conn, data, deadline))
            except _Unusable:
                drop = True  # nothing was published: the shared path may send it
            except asyncio.CancelledError:
                raise ChannelClosed(f"request on {self.url}: closed by this process") from None
            except KipcError:
                raise
            except Exception as e:  # the connection failed under it: reported (maybe sent), never resent
                drop = True
                raise _translate(e, self.url, "request on") from e
        finally:
            conn.lock.release()
            if drop or conn.doomed:
                self._drop_thread_conn(conn)
        return _SHARED

    def _new_thread_conn(self, deadline: Deadline) -> _direct.ThreadConn | None:
        now = time.monotonic()
        with self._conns_lock:
            dead = [c for c in self._conns if not c.thread_alive()]
            for c in dead:
                self._conns.remove(c)
            full = len(self._conns) >= _MAX_THREAD_CONNS
        for c in dead:  # threads that ended since: their connections go now
            c.close()
        rem = deadline.remaining()
        hurried = deadline.nonblocking or (rem is not None and rem < 0.1)  # no time for a connect
        if full or hurried or now < getattr(self._my_conn, "retry_at", 0.0):
            return None
        self._my_conn.retry_at = now + _CONN_RETRY  # until it works: no connect attempt per request
        servers, timeout, kw, dead_after = self._conn_args
        if rem is not None:
            timeout = min(timeout, rem / 2)  # the request keeps half its time for the shared path
        try:
            conn = _direct.connect(lambda: self._aconnect(servers, timeout, kw, dead_after, shared=False))
        except Exception:
            return None  # the shared connection still works: use it
        with self._conns_lock:
            if not self._closed and len(self._conns) < _MAX_THREAD_CONNS:  # others may have raced us here
                self._conns.append(conn)
                self._my_conn.conn = conn
                self._my_conn.retry_at = 0.0
                return conn
        conn.close()
        return None

    def _drop_thread_conn(self, conn: _direct.ThreadConn) -> None:
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        if getattr(self._my_conn, "conn", None) is conn:
            del self._my_conn.conn
        conn.close()

    async def _conn_request(self, conn: _direct.ThreadConn, data: bytes, deadline: Deadline) -> bytes:
        if not await conn.settle():
            raise _Unusable  # dropped while idle (or reconnecting): never publish on it
        return await self._request_on(conn.nc, data, deadline)

    def _no_responder(self) -> NotFound:
        return NotFound(f"request on {self.url}: no responder listens (open one with requests())")

    def _no_reply(self, deadline: Deadline) -> KipcError:
        what = f"request on {self.url}"
        if deadline.nonblocking:
            return WouldBlock(f"{what}: no reply within one round trip ({_NONBLOCK_RTT:g} s)")
        return deadline.error(what)

    async def arequest(self, obj: Any, *, timeout: float | None = None) -> Any:
        """``request`` for asyncio. Cancelled, the request may still have reached a responder."""
        data = self._prepare_send(obj, {})
        deadline = Deadline.of(timeout)
        self._check_pid("request on")
        runner = self._runner
        if runner is None or runner.stopped:
            raise ChannelClosed(f"request on {self.url}: closed by this process")
        # Like request(): the Express publishes it, _on_reply settles a future of the caller's own
        # loop (one call_soon_threadsafe back, none when that loop is the client's), and the timeout
        # is a timer on that loop -- no task, no run_coroutine_threadsafe, no wait_for per call.
        # Every way out (reply, error, timer, cancellation at the await) pops the token, so a late
        # reply finds nothing and nothing is left pending.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        token = f"r{next(self._tokens)}"
        self._reply_waits[token] = _AsyncReplyWait(loop, fut, loop is runner.loop)
        try:
            if self._closed:  # close() ran _interrupt before we registered: nobody would wake us
                raise ChannelClosed(f"request on {self.url}: closed by this process")
            self._reqq.append((token, bytes(data)))
            self._express_kick()
            rem = _NONBLOCK_RTT if deadline.nonblocking else deadline.remaining()
            timer = loop.call_later(max(rem, 0.0), _settle, fut, _TIMED_OUT, None) if rem is not None else None
            try:
                got = await fut
            finally:
                if timer is not None:
                    timer.cancel()
        finally:
            self._reply_waits.pop(token, None)
        if got is _TIMED_OUT:
            raise self._no_reply(deadline)
        return self.codec.decode(got)

    async def _request(self, data: bytes, deadline: Deadline) -> bytes:
        return await self._request_on(self._nc, data, deadline)

    async def _request_on(self, nc: Any, data: bytes, deadline: Deadline) -> bytes:
        """nats-py's own request (a thread's connection, or the loop thread's own sync call)."""
        rem = deadline.remaining()
        t = _NONBLOCK_RTT if deadline.nonblocking else (rem if rem is not None else _REQUEST_FOREVER)
        try:
            msg = await nc.request(self.request_subject, data, timeout=max(t, 0.001))
        except nats.errors.NoRespondersError:
            raise self._no_responder() from None
        except nats.errors.TimeoutError:
            raise self._no_reply(deadline) from None
        return msg.data if type(msg.data) is bytes else bytes(msg.data)

    def requests(self, *, pending_limit: int = 65536, conn: str = "own") -> Requests:
        """Become a responder: the requests sent to this name, each answered with ``req.reply(obj)``.

        Responders of one name share the load (a NATS queue group): each request goes
        to one of them. Close the returned object (or this channel) to stop.
        ``conn="own"`` (the default): a connection of its own, driven by the thread in
        ``next()`` (``_responder``: no thread crossing); ``conn="shared"``: this
        handle's connection, through the process's loop thread.
        """
        self._check_open("requests")
        self._check_pid("requests on")
        limit = _int_opt(pending_limit, "pending_limit")
        if conn not in ("own", "shared"):
            raise InvalidArgument(f"requests on {self.url}: conn must be 'own' or 'shared', not {conn!r}")
        if conn == "own":
            servers, timeout, kw, dead_after = self._conn_args
            own = Responder(f"requests on {self.url}", self.request_subject, _CONSUMER, limit,
                            lambda: self._aconnect(servers, timeout, kw, dead_after, shared=False))
            with self._conns_lock:
                closed = self._closed
                if not closed:
                    self._responders.add(own)
            if closed:  # close() ran meanwhile: it never saw this one
                own.close()
                raise ChannelClosed(f"requests on {self.url}: closed by this process")
            return Requests(self, own.box, None, own)
        box = Mailbox(limit)

        async def on_request(msg: Any) -> None:
            box.put(msg)

        async def subscribe() -> Any:
            sub = await self._nc.subscribe(self.request_subject, queue=_CONSUMER, cb=on_request,
                                           pending_msgs_limit=limit + 1024, pending_bytes_limit=-1)
            await self._nc.flush(5.0)  # listening before this returns
            return sub

        return Requests(self, box, self._run(subscribe()))

    def _reply(self, subject: str, data: bytes) -> None:
        self._replyq.append((subject, data))
        self._express_kick()  # the requester waits for it: out in the next loop iteration

    # -- close -----------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the window, hand prefetched messages back, then disconnect (the creator deletes the stream)."""
        if self._closed:
            return
        error: KipcError | None = None
        if self._nc is not None and self._pid == os.getpid() and self._pump is not None:
            try:
                if self._unconfirmed:
                    self.flush(_CLOSE_FLUSH)
            except KipcError as e:
                error = e
            with contextlib.suppress(Exception):
                self._run(self._finish())
        try:
            super().close()
        except KipcError as e:
            error = error or e
        if error is not None:
            raise error

    def _interrupt(self) -> None:
        super()._interrupt()
        for conn in self._thread_conns():
            conn.interrupt()
        for own in self._own_responders():
            own.close(wait=0.0)  # a next() blocked in another thread raises ChannelClosed now
        req = self.__dict__.get("_requester")
        if req is not None:
            req.close(wait=0.0)  # a request() waiting in another thread raises ChannelClosed now
        for token in list(self._reply_waits):
            w = self._reply_waits.pop(token, None)
            if w is not None:
                w.done(b"", ChannelClosed(f"request on {self.url}: closed by this process"))
        with self._room:
            self._room.notify_all()
        self._room_sig.wake()
        self._buf.wake()

    async def _finish(self) -> None:
        """Stop pulling; nak what was prefetched but never handed out; let the pending acks confirm."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2.0)
        for msg, _ in self._buf.take_many(len(self._buf)):
            self._nakq.append(msg.reply)
        await self._drain()
        end = time.monotonic() + _CLOSE_ACKS
        while (self._acks or self._ackq) and time.monotonic() < end and self._nc.is_connected:
            await asyncio.sleep(0.005)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._nc.flush(1.0), 2.0)
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        if self._pump is not None:
            await self._pump.stop()
        if self._express is not None:
            await self._express.stop()
        for task in (self._ticker, self._resender):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def _thread_conns(self, take: bool = False) -> list[_direct.ThreadConn]:
        lock = self.__dict__.get("_conns_lock")  # None: __init__ failed before making it
        if lock is None:
            return []
        with lock:
            conns = list(self._conns)
            if take:
                self._conns = []
        return conns

    def _own_responders(self) -> list[Responder]:
        lock = self.__dict__.get("_conns_lock")
        if lock is None:
            return []
        with lock:
            return list(self._responders)

    def _close(self) -> None:
        for conn in self._thread_conns(take=True):
            conn.close()
        req = self.__dict__.get("_requester")
        if req is not None:
            req.close()  # waits (bounded) until its connection is closed
        for own in self._own_responders():
            own.close()  # waits (bounded) until its connection is closed
        if self._nc is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self._run(self._stop_tasks())
            for sub in (self._sub, self._reply_sub):
                if sub is not None:
                    with contextlib.suppress(Exception):
                        self._run(_unsubscribe(sub))
            self._sub = self._reply_sub = None
        self._disconnect()

    async def _delete(self) -> None:
        await _remove_retrying(lambda: self._js.delete_stream(self.stream), nats.js.errors.NotFoundError, self.url)


class _Unusable(Exception):
    """A thread's connection was found disconnected before its request was published."""


class Delivery:
    """One received message awaiting its acknowledgement.

    ``with ch.receive() as m:`` acks on a clean exit and naks on an exception
    (immediate redelivery); if the process dies first, the server redelivers
    after the consumer's ``ack_wait``. ``.data`` is the raw bytes, ``.value``
    the decoded message.
    """

    def __init__(self, channel: NatsChannel, msg: Any) -> None:
        self.channel = channel
        self._msg = msg
        self.data: bytes = bytes(msg.data)
        self.value: Any = channel.codec.decode(self.data)
        self.done = False

    @property
    def redelivered(self) -> int:
        """How many times this message was delivered before (0 for a first delivery)."""
        return int(self._msg.metadata.num_delivered) - 1

    def ack(self) -> None:
        if not self.done:
            self.done = True
            self.channel._run(self.channel._ack(self._msg, Deadline(5.0)))

    def nak(self, delay: float | None = None) -> None:
        """Hand the message back for redelivery (after ``delay`` seconds)."""
        if not self.done:
            self.done = True
            self.channel._run(self._msg.nak(delay))

    def in_progress(self) -> None:
        """Reset the ack timer for a handler that needs longer than ``ack_wait``."""
        self.channel._run(self._msg.in_progress())

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.ack()
        else:
            with contextlib.suppress(Exception):
                self.nak()

    async def __aenter__(self) -> Delivery:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if self.done:
            return
        self.done = True
        ch = self.channel
        if exc_type is None:
            await ch._on_loop(ch._ack(self._msg, Deadline(5.0)))
        else:
            with contextlib.suppress(Exception):
                await ch._on_loop(self._msg.nak())



class Request:
    """One request received by :meth:`NatsChannel.requests`: ``.data`` (bytes), ``.value`` (decoded)."""

    __slots__ = ("_channel", "_own", "_subject", "data", "replied", "value")

    def __init__(self, channel: NatsChannel, msg: Any, own: Responder | None = None) -> None:
        self._channel = channel
        self._own = own
        self._subject: str = msg.reply
        self.data: bytes = msg.data if type(msg.data) is bytes else bytes(msg.data)
        self.value: Any = channel.codec.decode(self.data)
        self.replied = False

    def reply(self, obj: Any) -> None:
        """Answer (once). Never waits for the requester: at most once, like any core NATS reply.

        On an own-connection responder (the default) the bytes are written before this
        returns, unless another thread runs its loop (then that thread sends them).
        """
        if self.replied:
            raise InvalidArgument("this request was already answered")
        if not self._subject:
            raise InvalidArgument("this message was published without a reply subject")
        ch = self._channel
        data = ch._prepare_send(obj, {})
        if self._own is not None:
            self._own.reply(self._subject, bytes(data))  # ChannelClosed once the responder is closed
            self.replied = True
            return
        self.replied = True
        ch._reply(self._subject, bytes(data))


class Requests:
    """The requests of one responder (``ch.requests()``): ``next(timeout=)``, ``anext()``, iteration, ``close()``."""

    def __init__(self, channel: NatsChannel, box: Mailbox, sub: Any, own: Responder | None = None) -> None:
        self._channel = channel
        self._box = box
        self._sub = sub
        self._own = own
        self._closed = False

    def next(self, timeout: float | None = None) -> Request:
        deadline = Deadline.of(timeout)
        own = self._own
        if own is not None:
            return Request(self._channel, own.next(deadline), own)
        while True:
            msg = self._box.take()
            if msg is not None:
                return Request(self._channel, msg)
            self._check()
            if deadline.expired() or deadline.nonblocking:
                raise deadline.error(f"requests on {self._channel.url}")
            self._box.wait(deadline.slice().remaining())

    async def anext(self, timeout: float | None = None) -> Request:
        deadline = Deadline.of(timeout)
        own = self._own
        if own is not None:
            return Request(self._channel, await own.anext(deadline), own)
        while True:
            msg = self._box.take()
            if msg is not None:
                return Request(self._channel, msg)
            self._check()
            if deadline.expired() or deadline.nonblocking:
                raise deadline.error(f"requests on {self._channel.url}")
            await self._box.await_(deadline.slice().remaining())

    def _check(self) -> None:
        if self._closed:
            raise ChannelClosed(f"requests on {self._channel.url}: closed by this process")
        self._channel._check_open("requests")

    def __iter__(self) -> Iterator[Request]:
        while True:
            try:
                yield self.next()
            except ChannelClosed:
                return

    async def __aiter__(self) -> AsyncIterator[Request]:
        while True:
            try:
                yield await self.anext()
            except ChannelClosed:
                return

    def close(self) -> None:
        """Stop listening (requests not yet taken are dropped; their senders time out)."""
        if self._closed:
            return
        self._closed = True
        ch = self._channel
        if self._own is not None:
            self._own.close()
            with ch._conns_lock:
                ch._responders.discard(self._own)
            return
        self._box.wake()
        if ch._nc is not None and ch._pid == os.getpid() and not ch.closed:
            with contextlib.suppress(Exception):
                ch._run(_unsubscribe(self._sub))

    def __enter__(self) -> Requests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _unsubscribe(sub: Any) -> None:
    # created on the loop thread: if the loop is gone, the closed outer coroutine leaves no
    # never-awaited Subscription.unsubscribe behind (the RuntimeWarning at exit)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sub.unsubscribe(), 2.0)


# -- object kind: streams live in the server, nothing on this machine -----------------------------------------
KIND = RemoteKind("nats", "nats (nothing local: the stream lives in the server; shown if an owner record exists)")
