"""One nats-py connection per kipc object: URL and option parsing, auth/TLS, error translation,
and the calls from the caller's thread (or loop) into the process's loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors

from ..._base import Deadline, Resource
from ..._naming import (
    ParsedURL,
    parse_float,
    parse_int,
    validate_name,
)
from ...errors import (
    ChannelClosed,
    InvalidArgument,
    KipcError,
    NotFound,
    PermissionDenied,
    Timeout,
)
from . import _runtime
from ._runtime import _get_runner, _Runner, user_timeout

T = TypeVar("T")

_DEAD_LINK = 30.0  # without ping_interval: a connection whose sent data goes unacknowledged this long is dead

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


class _Client(Resource):
    """A nats-py connection owned by this object, driven from the process's loop thread."""

    url: str = "<unopened>"
    _nc: Any = None
    _pid: int = 0
    _runner: _Runner | None = None
    _conn_args: tuple[list[str], float, dict[str, Any], float]

    def _connect(self, servers: Any, url: str, creds: str | None, *, connect_timeout: Any = 5.0,
                 user: str | None = None, password: str | None = None, token: str | None = None,
                 creds_file: str | None = None, nkeys_seed: str | None = None,
                 tls: ssl.SSLContext | None = None, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_hostname: str | None = None, client_name: str | None = None,
                 ping_interval: Any = None) -> None:
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
        # how long sent data may stay unacknowledged before the kernel drops the connection (see
        # _runtime: without it nats-py hangs in its reconnect after a silent link death)
        dead_after = _DEAD_LINK
        if ping_interval is not None:
            # how soon a silently dead link (no RST: a cut cable, a partition) is noticed: ~3 pings
            kw["ping_interval"] = _float_opt(ping_interval, "ping_interval")
            kw["max_outstanding_pings"] = 2
            dead_after = max(1.0, 3 * kw["ping_interval"])
        kw = {k: v for k, v in kw.items() if v is not None}
        self._pid = os.getpid()
        self._runner = _get_runner()
        self._conn_args = (servers, timeout, kw, dead_after)  # for more connections like this one (_direct)
        self._nc = self._runner.run(self._aconnect(servers, timeout, kw, dead_after))

    async def _aconnect(self, servers: list[str], timeout: float, kw: dict[str, Any], dead_after: float,
                        shared: bool = True) -> Any:
        """Connect on the running loop; ``shared``: the process's loop thread (closed at exit by it)."""
        user_timeout.set(int(dead_after * 1000))  # copied into every task nats.connect starts below
        errors: list[BaseException] = []
        refused = asyncio.Event()
        in_a_row = 0

        async def on_error(e: Exception) -> None:
            # nats-py reports every failed (re)connect here; keep the last few for the message.
            # Every server refusing in a row means nothing listens there: fail now, not after
            # connect_timeout (a server that accepts but stays silent still takes the timeout).
            nonlocal in_a_row
            errors.append(e)
            del errors[:-3]
            in_a_row = in_a_row + 1 if isinstance(e, ConnectionRefusedError) else 0
            if in_a_row >= len(servers):
                refused.set()

        shown = ", ".join(re.sub(r"//[^@/]*@", "//", s) for s in servers)  # never print credentials
        connect = asyncio.ensure_future(nats.connect(
            servers, connect_timeout=min(timeout, 2.0), reconnect_time_wait=0.2, max_reconnect_attempts=-1,
            error_cb=on_error, **kw))
        gave_up = asyncio.ensure_future(refused.wait())
        try:
            await asyncio.wait({connect, gave_up}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gave_up.cancel()
            if not connect.done():
                connect.cancel()
                with contextlib.suppress(BaseException):
                    await connect
        try:
            if connect.cancelled():
                raise TimeoutError
            nc = connect.result()
        except (TimeoutError, nats.errors.NoServersError, OSError) as e:
            last = errors[-1] if errors else e
            if any(isinstance(x, nats.errors.AuthorizationError) or "Authorization Violation" in str(x)
                   for x in errors):
                raise PermissionDenied(f"connect {self.url}: {shown} refused our credentials") from None
            if isinstance(last, ssl.SSLError):
                raise PermissionDenied(f"connect {self.url}: TLS with {shown} failed ({last}); "
                                       "check tls_ca / tls_cert / tls_hostname") from None
            if refused.is_set() or isinstance(last, ConnectionRefusedError):
                raise NotFound(f"connect {self.url}: connection refused by {shown} (no NATS server listens there)"
                               ) from None
            raise Timeout(f"connect {self.url}: no NATS server answered at {shown} within {timeout:g} s "
                          f"({type(last).__name__}: {last})") from None
        if shared:
            assert self._runner is not None
            self._runner.clients.add(nc)
        return nc

    def _check_pid(self, op: str) -> None:
        if self._pid != _runtime.pid:
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
        super()._interrupt()

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

    def close(self) -> None:
        """Disconnect; the creator first removes the server object (unless ``persist=True``).

        The removal happens here, while still connected (``Resource.close`` would call
        ``_unlink`` after ``_close`` has disconnected); a finalizer only disconnects.
        """
        if self._closed:
            return
        error: KipcError | None = None
        if self.owner and not self.persist and self._nc is not None and self._pid == os.getpid():
            self.owner = False
            self._removed = True
            try:
                self._run(self._delete())
            except KipcError as e:
                error = e
        super().close()
        if error is not None:
            raise error

    def _unlink(self) -> None:
        if self._nc is None:
            raise ChannelClosed(f"unlink {self.url}: closed")
        self._run(self._delete())

    async def _delete(self) -> None:
        """Remove the server object (stream, bucket); only classes that create one override it."""

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload) if self._nc is not None else 0


_DELETE_WAIT = 20.0  # a creator's close() retries removing its server object this long (leader elections)


async def _remove_retrying(remove: Callable[[], Awaitable[Any]], gone: type[BaseException], url: str) -> None:
    """Remove a stream or bucket, retried while the JetStream API goes unanswered: right after a node
    failure the meta leader may be re-elected for seconds. A removal that succeeded unanswered makes
    the retry ``gone`` (not found), which is success."""
    loop = asyncio.get_running_loop()
    end = loop.time() + _DELETE_WAIT
    while True:
        try:
            await asyncio.wait_for(remove(), 5.0)
            return
        except gone:
            return
        except (TimeoutError, nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as e:
            if loop.time() >= end:
                raise _translate(e, url, "remove") from e
            await asyncio.sleep(0.25)
        except Exception as e:
            raise _translate(e, url, "remove") from e


def _common_options(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the connection options (shared by NatsChannel, Topic and KV)."""
    keys = ("connect_timeout", "user", "password", "token", "creds_file", "nkeys_seed", "tls", "tls_ca",
            "tls_cert", "tls_key", "tls_hostname", "client_name", "ping_interval")
    return {k: options.pop(k) for k in keys if k in options}


async def _await_deadline(aw: Awaitable[T], deadline: Deadline, what: str) -> T:
    try:
        return await asyncio.wait_for(aw, deadline.remaining())
    except TimeoutError:
        raise deadline.error(what) from None

