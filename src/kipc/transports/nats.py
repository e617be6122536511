"""NATS channels: the kipc channel contract across machines (JetStream work queues), plus Topic and KV.

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

:class:`Topic` — fan-out notifications on a core NATS subject (``kipc.t.<name>``):
every open Topic receives every message published after it subscribed; at
most once (a slow subscriber whose ``pending_limit`` fills loses messages,
counted in ``.dropped``), the cross-host counterpart of a signal.

:class:`KV` — a JetStream key-value bucket: get/put/delete, compare-and-set on
the revision, watch. The cross-host counterpart of shared memory.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import os
import re
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .._base import Channel, Deadline
from .._kinds import RemoteKind
from .._naming import (
    ParsedURL,
    merge_query,
    parse_bool,
    parse_float,
    parse_int,
    parse_url,
    validate_name,
    validate_timeout,
)
from ..codecs import Codec
from ..errors import (
    AlreadyExists,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    Timeout,
    Unsupported,
    WouldBlock,
)

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js import api
except ImportError as _e:  # pragma: no cover - the extra is not installed
    raise ImportError("nats:// channels need nats-py: pip install 'kipc[nats]'") from _e

__all__ = ["KIND", "KV", "Delivery", "KVEvent", "NatsChannel", "Topic"]

T = TypeVar("T")

_CONSUMER = "kipc"
_PULL_SLICE = 1.0  # longest single pull request: bounds how long a restart goes unnoticed
_RTT_GRACE = 0.25  # wait this long past a pull request's expiry for the server's answer
_NONBLOCK_RTT = 2.0  # timeout=0 still needs one round trip; this bounds it
_FULL_ERRORS = (10077, 10047)  # maximum messages / maximum bytes exceeded (discard new)
_HEADER_ROOM = 128  # bytes of max_payload kept for "NATS/1.0", Nats-Msg-Id and Nats-Expected-Stream


# -- the background loop -----------------------------------------------------------------
class _Runner:
    """One asyncio loop on a daemon thread, owned by the process that started it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self.stopped = False
        self.thread = threading.Thread(target=self.loop.run_forever, name="kipc-nats", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("kipc nats: sync call from the loop thread itself (use the async API)")
        if self.stopped:  # after exit cleanup (e.g. a finalizer at shutdown): never wait on a dead loop
            coro.close()
            raise ChannelClosed("kipc nats: the client loop has shut down (interpreter exiting)")
        fut = self.submit(coro)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # Ctrl-C: stop the operation on the loop too
            raise

    def shutdown(self) -> None:
        async def close_all() -> None:
            for nc in list(self.clients):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 2.0)

        with contextlib.suppress(Exception):
            self.submit(close_all()).result(5.0)
        self.stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


_runner: _Runner | None = None
_runner_lock = threading.Lock()


def _get_runner() -> _Runner:
    global _runner
    r = _runner
    if r is not None and r.pid == os.getpid():
        return r
    with _runner_lock:
        if _runner is None or _runner.pid != os.getpid():
            _runner = _Runner()  # a forked child never touches the parent's loop thread
        return _runner


def _after_fork() -> None:
    global _runner, _runner_lock
    _runner = None
    _runner_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _shutdown() -> None:
    r = _runner
    if r is not None and r.pid == os.getpid():
        r.shutdown()


# -- names, options, errors ----------------------------------------------------------------
def _escape(name: str) -> str:
    """A name as one subject token / stream name: keep [A-Za-z0-9-], the rest becomes _XX."""
    return re.sub(r"[^A-Za-z0-9-]", lambda m: "".join(f"_{b:02X}" for b in m.group().encode()), name)


def _float_opt(value: Any, what: str) -> float:
    try:
        f = float(parse_float(value, what=what))
    except TypeError:
        raise InvalidArgument(f"{what} {value!r} is not a number") from None
    if not f > 0 or f == float("inf"):
        raise InvalidArgument(f"{what} {value!r} must be > 0")
    return f


def _int_opt(value: Any, what: str, minimum: int = 1) -> int:
    return parse_int(value, what=what, hex=False, minimum=minimum)


def _split_url(parsed: ParsedURL, schemes: tuple[str, ...]) -> tuple[str, str, str | None]:
    """(server URL without credentials, name, credentials part or None)."""
    if parsed.scheme not in schemes:
        raise InvalidArgument(f"{parsed.url}: expected a {' or '.join(s + '://' for s in schemes)} URL")
    netloc = parsed.netloc
    creds = None
    if "@" in netloc:
        creds, _, netloc = netloc.rpartition("@")
    if not netloc:
        raise InvalidArgument(f"{parsed.url}: no host (expected nats://host:port/name)")
    if ":" not in netloc.rsplit("]", 1)[-1]:
        netloc += ":4222"
    name = parsed.path.lstrip("/")
    validate_name(name, what=f"{parsed.scheme} name in {parsed.url}")
    return f"nats://{netloc}", name, creds


def _translate(exc: BaseException, url: str, op: str) -> KipcError:
    """A nats-py exception as the kipc error that means the same thing."""
    if isinstance(exc, KipcError):
        return exc
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, nats.errors.AuthorizationError) or "Authorization Violation" in detail:
        return PermissionDenied(f"{op} {url}: the server refused our credentials ({detail})")
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError)):
        return ChannelClosed(f"{op} {url}: connection closed")
    if isinstance(exc, nats.js.errors.NotFoundError):
        return NotFound(f"{op} {url}: not found on the server ({detail})")
    if isinstance(exc, nats.js.errors.APIError):
        return KipcError(f"{op} {url}: JetStream refused: {exc.description} (code {exc.code}, err_code {exc.err_code})")
    if isinstance(exc, (TimeoutError, nats.errors.TimeoutError)):
        return Timeout(f"{op} {url}: no answer from the server")
    return KipcError(f"{op} {url}: {detail}")


def _tls_context(tls: ssl.SSLContext | None, ca: str | None, cert: str | None,
                 key: str | None) -> ssl.SSLContext | None:
    if tls is not None:
        return tls
    if not (ca or cert):
        return None
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class _Client:
    """A nats-py connection owned by this object, driven from the process's loop thread."""

    url: str = "<unopened>"
    _nc: Any = None
    _pid: int = 0
    _runner: _Runner | None = None

    def _connect(self, servers: Any, url: str, creds: str | None, *, connect_timeout: Any = 5.0,
                 user: str | None = None, password: str | None = None, token: str | None = None,
                 creds_file: str | None = None, nkeys_seed: str | None = None,
                 tls: ssl.SSLContext | None = None, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_hostname: str | None = None, client_name: str | None = None) -> None:
        timeout = _float_opt(connect_timeout, "connect_timeout")
        if servers is None:
            servers = [url.replace("nats://", f"nats://{creds}@", 1) if creds else url]
        elif isinstance(servers, str):
            servers = [s.strip() for s in servers.split(",") if s.strip()]
        else:
            servers = list(servers)
        kw: dict[str, Any] = {"user": user, "password": password, "token": token, "nkeys_seed": nkeys_seed,
                              "user_credentials": creds_file, "tls_hostname": tls_hostname, "name": client_name,
                              "tls": _tls_context(tls, tls_ca, tls_cert, tls_key)}
        kw = {k: v for k, v in kw.items() if v is not None}
        self._pid = os.getpid()
        self._runner = _get_runner()
        self._nc = self._runner.run(self._aconnect(servers, timeout, kw))

    async def _aconnect(self, servers: list[str], timeout: float, kw: dict[str, Any]) -> Any:
        errors: list[BaseException] = []

        async def on_error(e: Exception) -> None:
            # nats-py reports every failed (re)connect here; keep the last few for the message
            errors.append(e)
            del errors[:-3]

        shown = ", ".join(re.sub(r"//[^@/]*@", "//", s) for s in servers)  # never print credentials
        try:
            nc = await asyncio.wait_for(nats.connect(
                servers, connect_timeout=min(timeout, 2.0), reconnect_time_wait=0.2, max_reconnect_attempts=-1,
                error_cb=on_error, **kw), timeout)
        except (TimeoutError, nats.errors.NoServersError, OSError) as e:
            last = errors[-1] if errors else e
            if any(isinstance(x, nats.errors.AuthorizationError) or "Authorization Violation" in str(x)
                   for x in errors):
                raise PermissionDenied(f"connect {self.url}: {shown} refused our credentials") from None
            if isinstance(last, ssl.SSLError):
                raise PermissionDenied(f"connect {self.url}: TLS with {shown} failed ({last}); "
                                       "check tls_ca / tls_cert / tls_hostname") from None
            cls = NotFound if isinstance(last, ConnectionRefusedError) else Timeout
            raise cls(f"connect {self.url}: no NATS server answered at {shown} within {timeout:g} s "
                      f"({type(last).__name__}: {last})") from None
        assert self._runner is not None
        self._runner.clients.add(nc)
        return nc

    def _check_pid(self, op: str) -> None:
        if self._pid != os.getpid():
            raise ChannelClosed(f"{op} {self.url}: opened in process {self._pid}; open it again after fork")

    _inflight: set[concurrent.futures.Future[Any]] | None = None
    #: a receive whose arecv was cancelled, still running on the loop thread (see _keep_on_cancel)
    _orphan: concurrent.futures.Future[Any] | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        runner = self._runner
        if runner is None:
            coro.close()
            raise ChannelClosed(f"operation on {self.url}: closed by this process")
        if self._inflight is None:
            self._inflight = set()
        if threading.current_thread() is runner.thread or runner.stopped:
            return runner.run(coro)  # raises the right error without waiting
        fut = runner.submit(coro)
        self._inflight.add(fut)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise ChannelClosed(f"operation on {self.url}: closed by this process") from None
        except BaseException as e:
            fut.cancel()  # Ctrl-C: stop the operation on the loop too
            if isinstance(e, (KipcError, RuntimeError)) or not isinstance(e, Exception):
                raise
            raise _translate(e, self.url, "operation on") from e  # never let a raw nats-py error escape
        finally:
            self._inflight.discard(fut)

    def _interrupt(self) -> None:
        # close() from another thread: end the calls other threads wait for (they raise ChannelClosed)
        for fut in list(self._inflight or ()):
            fut.cancel()
        base = getattr(super(), "_interrupt", None)
        if base is not None:
            base()

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop thread from whatever loop the caller runs."""
        assert self._runner is not None
        try:
            if asyncio.get_running_loop() is self._runner.loop:
                return await coro
            return await asyncio.wrap_future(self._runner.submit(coro))
        except (KipcError, RuntimeError, asyncio.CancelledError):
            raise
        except Exception as e:
            raise _translate(e, self.url, "operation on") from e

    def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        if nc is None or self._pid != os.getpid() or self._runner is None:
            return  # a forked child must not touch the parent's socket state

        async def close() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.flush(1.0), 2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)

        with contextlib.suppress(ChannelClosed, RuntimeError):  # loop gone / called from a finalizer on it
            self._runner.run(close())

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload) if self._nc is not None else 0


def _common_options(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the connection options (shared by NatsChannel, Topic and KV)."""
    keys = ("connect_timeout", "user", "password", "token", "creds_file", "nkeys_seed", "tls", "tls_ca",
            "tls_cert", "tls_key", "tls_hostname", "client_name")
    return {k: options.pop(k) for k in keys if k in options}


async def _await_deadline(aw: Awaitable[T], deadline: Deadline, what: str) -> T:
    try:
        return await asyncio.wait_for(aw, deadline.remaining())
    except TimeoutError:
        raise deadline.error(what) from None


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
        if create not in (True, False, "if_missing"):
            create = parse_bool(create, what="create")
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
        headers = {"Nats-Msg-Id": self._nc._nuid.next().decode()}
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
    def close(self) -> None:
        """Disconnect; the creator first deletes the stream (unless ``persist=True``)."""
        if self._closed:
            return
        error: KipcError | None = None
        if self.owner and not self.persist and self._nc is not None and self._pid == os.getpid():
            self.owner = False  # deleted here, while connected (a finalizer only disconnects)
            try:
                self._run(self._delete())
            except KipcError as e:
                error = e
        super().close()
        if error is not None:
            raise error

    def _close(self) -> None:
        if self._sub is not None and self._nc is not None and self._pid == os.getpid():
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                self._run(asyncio.wait_for(sub.unsubscribe(), 2.0))
        self._disconnect()

    def _unlink(self) -> None:
        if self._nc is None:
            raise ChannelClosed(f"unlink {self.url}: closed")
        self._run(self._delete())

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


# -- fan-out -------------------------------------------------------------------------------
class Topic(_Client, Channel):
    """Fan-out on a core NATS subject: every subscriber gets every message (at most once).

    ``Topic("nats://host:4222/alerts")`` subscribes when opened (pass
    ``subscribe=False`` for a publisher only). ``send`` publishes; ``recv``
    returns the next message this Topic received. There is nothing to create or
    remove on the server. ``nats+pub://`` URLs are accepted as a synonym.
    """

    scheme = "nats+pub"
    _sub: Any = None
    _queue: asyncio.Queue[bytes] | None = None
    dropped = 0

    def __init__(self, url: str, *, subscribe: bool | str = True, codec: str | Codec | None = None,
                 servers: str | list[str] | None = None, pending_limit: int | str = 65536, **conn: Any) -> None:
        parsed = parse_url(url)
        server, name, creds = _split_url(parsed, ("nats", "nats+pub"))
        subscribe = parse_bool(subscribe, what="subscribe")
        limit = _int_opt(pending_limit, "pending_limit")
        self.url = f"{parsed.scheme}://{server.partition('://')[2]}/{name}"
        self.subject = f"kipc.t.{_escape(name)}"
        self._connect(servers, server, creds, **_common_options(conn))
        if conn:
            self._disconnect()
            raise TypeError(f"Topic() got unexpected options {sorted(conn)}")
        try:
            if subscribe:
                self._run(self._subscribe(limit))
            else:
                self.readable = False
        except BaseException:
            self._disconnect()
            raise
        self.max_message_size = self.max_payload
        self._init_channel(self.url, codec=codec)

    async def _subscribe(self, limit: int) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=limit)
        self._queue = queue

        async def on_msg(msg: Any) -> None:
            try:
                queue.put_nowait(msg.data)
            except asyncio.QueueFull:
                self.dropped += 1  # at most once: a subscriber this slow loses messages

        self._sub = await self._nc.subscribe(self.subject, cb=on_msg)
        await self._nc.flush(5.0)  # the subscription is registered before open() returns

    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> Topic:
        return cls(parsed.url.split("?", 1)[0], **merge_query(parsed, options))


    async def _apublish(self, data: bytes) -> None:
        try:
            await self._nc.publish(self.subject, data)
        except nats.errors.ConnectionClosedError:
            raise ChannelClosed(f"send on {self.url}: connection closed") from None
        except nats.errors.OutboundBufferLimitError:
            raise WouldBlock(f"send on {self.url}: disconnected and the reconnect buffer is full") from None

    async def _aget(self, deadline: Deadline) -> bytes:
        assert self._queue is not None
        if deadline.nonblocking:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                raise WouldBlock(f"recv on {self.url}: no message") from None
        return await _await_deadline(self._queue.get(), deadline, f"recv on {self.url}")

    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        self._run(self._apublish(bytes(data)))

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        if not self.readable:
            raise Unsupported(f"recv on {self.url}: opened with subscribe=False")
        if self._orphan is not None:
            got = _adopt_orphan(self, deadline)
            if got is not _NOTHING:
                return got
        return self._run(self._aget(deadline))

    _async_native = True

    async def _asend_native(self, data: memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        await _uncancellable_publish(self, self._apublish(bytes(data)))

    async def _arecv_native(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        if not self.readable:
            raise Unsupported(f"recv on {self.url}: opened with subscribe=False")
        if self._orphan is not None:
            got = await _aadopt_orphan(self, deadline)
            if got is not _NOTHING:
                return got
        # _aget only takes from the local queue once it returns: a cancellation before that
        # loses nothing, one after it is caught by _keep_on_cancel.
        return await _keep_on_cancel(self, self._aget(deadline))

    def fileno(self) -> int:
        self._check_open("fileno")
        return super().fileno()  # Unsupported: the socket belongs to the loop thread

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has everything published so far."""
        self._run(self._nc.flush(timeout))

    def _close(self) -> None:
        self._disconnect()


# -- key-value -----------------------------------------------------------------------------
@dataclass(frozen=True)
class KVEvent:
    """One change seen by :meth:`KV.watch`: ``value`` is None for a delete."""

    key: str
    value: bytes | None
    revision: int
    operation: str  # "PUT", "DEL" or "PURGE"


_BUCKET_RE = re.compile(r"[A-Za-z0-9_-]+\Z")


class KV(_Client):
    """A JetStream key-value bucket: ``KV("nats://host:4222/config", create="if_missing")``.

    Values are bytes. ``get``/``put``/``delete``; ``cas(key, value, revision)``
    writes only if the key's latest revision is ``revision`` (0: only if absent)
    and returns the new revision, or None when someone else wrote first;
    ``watch(keys)`` yields :class:`KVEvent` s. The creator deletes the bucket on
    ``close()`` unless ``persist=True``. Keys: letters, digits and ``-_=./``.
    """

    _closed = True
    owner = False
    persist = False

    def __init__(self, url: str, *, create: bool | str = False, persist: bool | str = False,
                 servers: str | list[str] | None = None, history: int | str = 1, replicas: int | str = 1,
                 storage: str = "file", **conn: Any) -> None:
        parsed = parse_url(url)
        server, name, creds = _split_url(parsed, ("nats", "nats+kv"))
        if not _BUCKET_RE.match(name):
            raise InvalidArgument(f"{url}: a KV bucket name is letters, digits, '_' and '-' only")
        if create not in (True, False, "if_missing"):
            create = parse_bool(create, what="create")
        if storage not in ("file", "memory"):
            raise InvalidArgument(f"{url}: storage must be 'file' or 'memory', not {storage!r}")
        self.persist = parse_bool(persist, what="persist")
        self.url = f"{server}/{name}"
        self.bucket = name
        self._connect(servers, server, creds, **_common_options(conn))
        if conn:
            self._disconnect()
            raise TypeError(f"KV() got unexpected options {sorted(conn)}")
        config = api.KeyValueConfig(bucket=name, history=_int_opt(history, "history"),
                                    replicas=_int_opt(replicas, "replicas"),
                                    storage=api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY)
        try:
            self.owner = self._run(self._setup(create, config))
        except BaseException:
            self._disconnect()
            raise
        self._closed = False

    async def _setup(self, create: bool | str, config: Any) -> bool:
        js = self._nc.jetstream()
        self._js = js
        try:
            try:
                self._kv = await js.key_value(self.bucket)
                if create is True:
                    raise AlreadyExists(f"create {self.url}: bucket {self.bucket} already exists")
                return False
            except nats.js.errors.BucketNotFoundError:
                if create is False:
                    raise NotFound(f"open {self.url}: no KV bucket {self.bucket} (create=True makes it)") from None
            self._kv = await js.create_key_value(config)
            return True
        except BaseException as e:
            raise _translate(e, self.url, "open") from (None if isinstance(e, KipcError) else e)

    def _call(self, op: str, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ChannelClosed(f"{op} on {self.url}: closed by this process")
        self._check_pid(f"{op} on")

        async def guarded() -> T:
            try:
                return await asyncio.wait_for(coro, 10.0)
            except Exception as e:
                raise _translate(e, self.url, f"{op} on") from e

        return self._run(guarded())

    @staticmethod
    def _key(key: object) -> str:
        if not isinstance(key, str):
            raise TypeError(f"KV key must be str, not {type(key).__name__}")
        if not re.fullmatch(r"[-/_=.a-zA-Z0-9]+", key) or key.startswith(".") or key.endswith("."):
            raise InvalidArgument(f"KV key {key!r}: use letters, digits and -/_=. (not starting or ending with '.')")
        return key

    def entry(self, key: str) -> tuple[bytes, int] | None:
        """``(value, revision)`` of ``key``, or None if it is absent or deleted."""
        k = self._key(key)

        async def get() -> tuple[bytes, int] | None:
            try:
                e = await self._kv.get(k)
            except nats.js.errors.KeyNotFoundError:  # also covers KeyDeletedError
                return None
            return bytes(e.value or b""), int(e.revision)

        return self._call("get", get())

    def get(self, key: str, default: Any = KeyError) -> Any:
        """The value of ``key``; ``KeyError`` (or ``default``) if absent."""
        found = self.entry(key)
        if found is None:
            if default is KeyError:
                raise KeyError(key)
            return default
        return found[0]

    def put(self, key: str, value: bytes) -> int:
        """Store ``value``; returns the new revision."""
        return self._call("put", self._kv.put(self._key(key), bytes(value)))

    def delete(self, key: str) -> None:
        self._call("delete", self._kv.delete(self._key(key)))

    def cas(self, key: str, value: bytes, revision: int) -> int | None:
        """Write only if ``key`` is at ``revision`` (0: absent); the new revision, or None if it moved."""
        k = self._key(key)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise InvalidArgument(f"revision {revision!r} must be an int >= 0")

        async def update() -> int | None:
            try:
                if revision == 0:
                    return int(await self._kv.create(k, bytes(value)))
                return int(await self._kv.update(k, bytes(value), last=revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
            except nats.js.errors.APIError as e:
                if e.err_code in (10071, 10164):  # wrong last sequence (create over an existing key)
                    return None
                raise

        return self._call("cas", update())

    def keys(self) -> list[str]:
        async def keys() -> list[str]:
            try:
                return list(await self._kv.keys())
            except nats.js.errors.NoKeysError:
                return []

        return self._call("keys", keys())

    def watch(self, keys: str = ">", *, include_history: bool = False) -> KVWatch:
        """The current value of each matching key, then every change (``keys`` may use ``*``/``>``)."""
        if not isinstance(keys, str) or not keys:
            raise InvalidArgument(f"keys {keys!r} must be a non-empty subject pattern")
        watcher = self._call("watch", self._kv.watch(keys, include_history=include_history))
        return KVWatch(self, watcher)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        error: KipcError | None = None
        if self.owner and not self.persist and self._nc is not None and self._pid == os.getpid():
            self.owner = False
            try:
                self._run(asyncio.wait_for(self._js.delete_key_value(self.bucket), 5.0))
            except Exception as e:
                error = _translate(e, self.url, "remove")
        self._disconnect()
        if error is not None:
            raise error

    def __enter__(self) -> KV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self._closed = True
                self._disconnect()

    def __repr__(self) -> str:
        return f"<KV {self.url} {'closed' if self._closed else 'open'}>"


class KVWatch:
    """Iterator of :class:`KVEvent` from :meth:`KV.watch`; ``next(timeout=)``, ``close()``."""

    def __init__(self, kv: KV, watcher: Any) -> None:
        self._kv = kv
        self._watcher = watcher
        self._closed = False

    async def _anext(self, deadline: Deadline) -> KVEvent:
        while True:
            try:
                entry = await self._watcher.updates(timeout=deadline.remaining())
            except (TimeoutError, nats.errors.TimeoutError):
                raise deadline.error(f"watch on {self._kv.url}") from None
            if entry is None:  # nats-py's "initial values done" marker
                continue
            if not hasattr(entry, "key"):  # the stop sentinel
                raise ChannelClosed(f"watch on {self._kv.url}: stopped")
            op = entry.operation or "PUT"
            return KVEvent(entry.key, None if op != "PUT" else bytes(entry.value or b""), int(entry.revision), op)

    def next(self, timeout: float | None = None) -> KVEvent:
        """The next change (``Timeout`` if none within ``timeout``; 0 -> ``WouldBlock``)."""
        deadline = Deadline(validate_timeout(timeout))
        if deadline.nonblocking:
            deadline = Deadline(0.001)
            try:
                return self._kv._run(self._anext(deadline))
            except Timeout:
                raise WouldBlock(f"watch on {self._kv.url}: no change") from None
        return self._kv._run(self._anext(deadline))

    async def anext(self, timeout: float | None = None) -> KVEvent:
        return await self._kv._on_loop(self._anext(Deadline.of(timeout)))

    def __iter__(self) -> Iterator[KVEvent]:
        while not self._closed:
            try:
                yield self.next()
            except ChannelClosed:
                return

    async def __aiter__(self) -> AsyncIterator[KVEvent]:
        while not self._closed:
            try:
                yield await self.anext()
            except ChannelClosed:
                return

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._kv._nc is not None and self._kv._pid == os.getpid():
                with contextlib.suppress(Exception):
                    self._kv._run(asyncio.wait_for(self._watcher.stop(), 2.0))

    def __enter__(self) -> KVWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- cancellation without loss (the channel contract's asyncio rule, for loop-thread I/O) --------
async def _keep_on_cancel(ch: Any, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` (a receive) on the channel's loop thread. If the caller is cancelled, the
    receive goes on there as the channel's *orphan*: the next recv/arecv waits for it first and
    returns its message, so a pulled (and acked) message is neither lost nor reordered."""
    assert ch._runner is not None
    if asyncio.get_running_loop() is ch._runner.loop:
        return await coro
    cf = ch._runner.submit(coro)
    try:
        return await asyncio.shield(asyncio.wrap_future(cf))
    except asyncio.CancelledError:
        ch._orphan = cf
        raise
    except (KipcError, RuntimeError):
        raise
    except Exception as e:
        raise _translate(e, ch.url, "operation on") from e


_NOTHING = object()


def _adopt_orphan(ch: Any, deadline: Deadline) -> Any:
    """Sync side of :func:`_keep_on_cancel`: the orphan's message, or _NOTHING if it failed."""
    cf, ch._orphan = ch._orphan, None
    try:
        return cf.result(deadline.remaining())
    except concurrent.futures.TimeoutError:
        ch._orphan = cf  # still the pending receive: the next call waits for it again
        raise deadline.error(f"recv on {ch.url}") from None
    except BaseException:
        return _NOTHING  # that receive ended without a message: receive afresh


async def _aadopt_orphan(ch: Any, deadline: Deadline) -> Any:
    cf, ch._orphan = ch._orphan, None
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(cf)), deadline.remaining())
    except asyncio.CancelledError:
        ch._orphan = cf  # cancelled again: still the pending receive
        raise
    except TimeoutError:
        ch._orphan = cf
        raise deadline.error(f"recv on {ch.url}") from None
    except Exception:
        return _NOTHING


async def _uncancellable_publish(ch: Any, coro: Coroutine[Any, Any, None]) -> None:
    """Await a publish on the loop thread. A message handed to the server cannot be taken back,
    so a cancellation that arrives while the publish runs waits for it: if it went out, asend
    returns normally (the caller sees it sent); if it failed, CancelledError is raised."""
    assert ch._runner is not None
    if asyncio.get_running_loop() is ch._runner.loop:
        return await coro
    cf = ch._runner.submit(coro)
    inner = asyncio.wrap_future(cf)
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        if cf.cancel():
            raise  # not started: nothing was sent
        try:
            await asyncio.wait_for(asyncio.shield(inner), 30)
        except Exception:
            raise asyncio.CancelledError from None
        return  # it was sent: report the truth rather than a cancellation
    except (KipcError, RuntimeError):
        raise
    except Exception as e:
        raise _translate(e, ch.url, "operation on") from e
# -- object kind: streams live in the server, nothing on this machine -----------------------------------------
KIND = RemoteKind("nats", "nats (nothing local: the stream lives in the server; shown if an owner record exists)")
