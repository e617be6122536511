"""The JetStream work-queue channel (``nats://host:port/name``) and its ``Delivery``.

Contract card — ``nats://host:port/name`` (:class:`NatsChannel`):

* Mechanism: one JetStream stream per channel name (``KIPC_<name>``, subject
  ``kipc.q.<name>``, work-queue retention, file storage by default) and one
  durable pull consumer (``kipc``) shared by every receiver: each message goes
  to exactly one receiver. Names outside ``[A-Za-z0-9-]`` are escaped as ``_XX``.
* Delivery: at-least-once. ``recv()`` acknowledges (and waits for the server to
  confirm the ack) before it returns the message. ``with ch.receive() as m:``
  acknowledges only when the block exits cleanly; an exception naks it, a
  crash lets it be redelivered after ``ack_wait`` seconds (default 30).
  Publishing carries a ``Nats-Msg-Id``, so a send retried after a lost
  reply is stored once (within the stream's 2 min duplicate window).
* Ordering: FIFO per producer while nothing is redelivered.
* Max message: the server's ``max_payload`` (1 MiB by default) minus room for
  kipc's headers; larger -> ``MessageTooLarge`` naming both numbers, before
  anything is published.
* Blocking: ``send`` blocks while the stream is full (``max_msgs``/``max_bytes``
  set, discard-new policy) or the server is unreachable (the client
  reconnects); ``recv`` while it is empty. ``timeout=`` on both; ``timeout=0``
  makes one round trip and raises ``WouldBlock`` instead of waiting.
* Knobs: none (``type=``/``priority=`` raise ``Unsupported``).
* Threads: the sync API runs one asyncio loop thread per process (started
  lazily, stopped at exit; a forked child starts its own and refuses the
  parent's channels). ``asend``/``arecv`` await that loop's futures without
  blocking the caller's loop or using a thread per call.
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
import json
import os
import time
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js import api
from nats.nuid import NUID

from ..._base import Channel, Deadline
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
    WouldBlock,
)
from ._cancel import _NOTHING, _aadopt_orphan, _adopt_orphan, _keep_on_cancel, _uncancellable_publish
from ._client import _Client, _common_options, _escape, _float_opt, _int_opt, _split_url, _translate

T = TypeVar("T")

__all__ = ["KIND", "Delivery", "NatsChannel"]

_CONSUMER = "kipc"
_PULL_SLICE = 1.0  # longest single pull request: bounds how long a restart goes unnoticed
_RTT_GRACE = 0.25  # wait this long past a pull request's expiry for the server's answer
_NONBLOCK_RTT = 2.0  # timeout=0 still needs one round trip; this bounds it
_FULL_ERRORS = (10077, 10047)  # maximum messages / maximum bytes exceeded (discard new)
_HEADER_ROOM = 128  # bytes of max_payload kept for "NATS/1.0", Nats-Msg-Id and Nats-Expected-Stream


# -- the work-queue channel ------------------------------------------------------------------
class NatsChannel(_Client, Channel):
    """A JetStream work-queue channel (see the module docstring)."""

    scheme = "nats"
    _sub: Any = None
    _inbox: asyncio.Queue[Any] | None = None
    _pull_lock: asyncio.Lock | None = None

    def __init__(self, url: str, *, create: bool | str = False, persist: bool | str = False,
                 codec: str | Codec | None = None, servers: str | list[str] | None = None,
                 ack_wait: float | str = 30.0, max_msgs: int | str | None = None,
                 max_bytes: int | str | None = None, max_deliver: int | str | None = None,
                 replicas: int | str = 1, storage: str = "file", **conn: Any) -> None:
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
        self.url = f"{server}/{name}"
        self.name = name
        self.stream = f"KIPC_{_escape(name)}"
        self.subject = f"kipc.q.{_escape(name)}"
        conn_options = _common_options(conn)
        if conn:
            raise TypeError(f"nats channel got unexpected options {sorted(conn)}")
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
        self._nuid = NUID()  # Nats-Msg-Id: unique per message, reused by every retry of it
        created = False
        try:
            exists = True
            try:
                await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                exists = False
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
                    max_deliver=self._max_deliver, max_ack_pending=-1))
            # Our own inbox: pull responses arrive on it (one pull request outstanding at a time).
            self._inbox = asyncio.Queue()
            self._pull_lock = asyncio.Lock()
            inbox = self._inbox
            self._deliver = self._nc.new_inbox()

            async def on_msg(msg: Any) -> None:
                inbox.put_nowait(msg)

            self._sub = await self._nc.subscribe(self._deliver, cb=on_msg)
        except BaseException as e:
            if created:
                with contextlib.suppress(Exception):
                    await js.delete_stream(self.stream)
            raise _translate(e, self.url, "open") from (None if isinstance(e, KipcError) else e)
        return created

    # -- send ------------------------------------------------------------------------------
    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        self._run(self._publish(bytes(data), deadline))

    async def _publish(self, data: bytes, deadline: Deadline) -> None:
        headers = {"Nats-Msg-Id": self._nuid.next().decode()}
        what = f"send on {self.url}"
        delay = 0.005
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
                await self._js.publish(self.subject, data, timeout=t, stream=self.stream, headers=dict(headers))
                return
            except nats.js.errors.APIError as e:
                if e.err_code not in _FULL_ERRORS:
                    raise _translate(e, self.url, "send on") from e
                if deadline.nonblocking:
                    raise WouldBlock(f"{what}: the stream is full ({e.description})") from None
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
                    nats.errors.OutboundBufferLimitError):
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
    async def _pull(self, deadline: Deadline) -> Any:
        """The next message for this consumer (not yet acknowledged)."""
        assert self._pull_lock is not None and self._inbox is not None
        what = f"recv on {self.url}"
        req_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{_CONSUMER}"
        checked = 0.0
        async with self._pull_lock:
            while True:
                if not self._inbox.empty():  # a late answer to an earlier pull: a valid delivery
                    msg = self._inbox.get_nowait()
                else:
                    rem = deadline.remaining()
                    if deadline.nonblocking:
                        req: dict[str, Any] = {"batch": 1, "no_wait": True}
                        wait = _NONBLOCK_RTT
                    else:
                        if rem is not None and rem <= 0:
                            raise deadline.error(what)
                        slice_ = _PULL_SLICE if rem is None else min(_PULL_SLICE, rem)
                        req = {"batch": 1, "expires": max(1_000_000, int(slice_ * 1e9))}
                        wait = slice_ + _RTT_GRACE
                    try:
                        await self._nc.publish(req_subject, json.dumps(req).encode(), reply=self._deliver)
                        msg = await asyncio.wait_for(self._inbox.get(), wait)
                    except TimeoutError:
                        if deadline.nonblocking:
                            raise WouldBlock(f"{what}: no answer from the server within {_NONBLOCK_RTT:g} s") from None
                        continue  # the server was away (restart, election): pull again
                    except nats.errors.ConnectionClosedError:
                        raise ChannelClosed(f"{what}: connection closed") from None
                    except nats.errors.OutboundBufferLimitError:
                        await asyncio.sleep(0.05)
                        continue
                status = msg.headers.get("Status") if msg.headers else None
                if status is None and msg.reply:
                    return msg
                if status in ("404", "408") and deadline.nonblocking:
                    raise WouldBlock(f"{what}: the channel is empty")
                if status == "409" and "Deleted" in (msg.headers.get("Description") or ""):
                    raise ChannelClosed(f"{what}: the stream was removed")
                if status in ("409", "503"):
                    # 503 no responders: JetStream restarting / electing a leader, or the stream is gone
                    if status == "503" and time.monotonic() - checked > 1.0:
                        checked = time.monotonic()
                        await self._check_stream(what)
                    await asyncio.sleep(0.05)
                # 404/408 (nothing within the expiry), 409 (limits, leader change), heartbeats: pull again

    async def _check_stream(self, what: str) -> None:
        """ChannelClosed if the stream (or its consumer) was removed; quiet while the server is away."""
        try:
            await self._js.consumer_info(self.stream, _CONSUMER, timeout=1.0)
        except nats.js.errors.NotFoundError:
            raise ChannelClosed(f"{what}: the stream was removed") from None
        except Exception:
            pass  # not answering: a restart or an election; keep pulling until the deadline

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

    async def _recv_async(self, deadline: Deadline) -> bytes:
        msg = await self._pull(deadline)
        await self._ack(msg, deadline)
        return bytes(msg.data)

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        if self._orphan is not None:
            got = _adopt_orphan(self, deadline)
            if got is not _NOTHING:
                return got
        return self._run(self._recv_async(deadline))

    def fileno(self) -> int:
        self._check_open("fileno")
        return super().fileno()  # Unsupported: the socket belongs to the loop thread

    def receive(self, *, timeout: float | None = None) -> Delivery:
        """The next message, acknowledged when its ``with`` block exits cleanly (or by ``.ack()``)."""
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        self._check_pid("recv on")
        return Delivery(self, self._run(self._pull(deadline)))

    async def areceive(self, *, timeout: float | None = None) -> Delivery:
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        self._check_pid("recv on")
        return Delivery(self, await self._on_loop(self._pull(deadline)))

    def _too_large(self, size: int, limit: int) -> MessageTooLarge:
        return MessageTooLarge(f"send on {self.url}: message of {size} bytes exceeds the limit of {limit} bytes "
                               f"(server max_payload {self.max_payload})", size=size, limit=limit)

    # -- asyncio: await the loop thread's futures (no thread per call) ----------------------
    _async_native = True

    async def _asend_native(self, data: memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        await _uncancellable_publish(self, self._publish(bytes(data), deadline))

    async def _arecv_native(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        if self._orphan is not None:
            got = await _aadopt_orphan(self, deadline)
            if got is not _NOTHING:
                return got
        return await _keep_on_cancel(self, self._recv_async(deadline))

    # -- close -----------------------------------------------------------------------------
    def _close(self) -> None:
        if self._sub is not None and self._nc is not None and self._pid == os.getpid():
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                self._run(_unsubscribe(sub))
        self._disconnect()

    async def _delete(self) -> None:
        try:
            await asyncio.wait_for(self._js.delete_stream(self.stream), 5.0)
        except nats.js.errors.NotFoundError:
            pass
        except Exception as e:
            raise _translate(e, self.url, "remove") from e


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



async def _unsubscribe(sub: Any) -> None:
    # created on the loop thread: if the loop is gone, the closed outer coroutine leaves no
    # never-awaited Subscription.unsubscribe behind (the RuntimeWarning at exit)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sub.unsubscribe(), 2.0)


# -- object kind: streams live in the server, nothing on this machine -----------------------------------------
KIND = RemoteKind("nats", "nats (nothing local: the stream lives in the server; shown if an owner record exists)")
