"""KV: a JetStream key-value bucket, the cross-host counterpart of shared memory.

Contract card: values are bytes; ``get``/``put``/``delete``/``keys``;
``cas(key, value, revision)`` writes only if the key is at ``revision`` (0:
absent); ``watch(pattern)`` yields the current values then every change. The
creator (``create=True``, or ``"if_missing"`` when it was missing) deletes the
bucket on ``close()`` unless ``persist=True`` (``kipc._base.Resource`` rules:
a forked child or an opener removes nothing; a finalizer only disconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from ..._base import Deadline
from ..._naming import (
    parse_bool,
    parse_url,
    validate_timeout,
)
from ..._objects import parse_create
from ...errors import (
    AlreadyExists,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    NotFound,
    Timeout,
    WouldBlock,
)
from ._client import _Client, _common_options, _int_opt, _remove_retrying, _split_url, _translate

T = TypeVar("T")
D = TypeVar("D")  # KV.get's default

__all__ = ["KV", "KVEvent", "KVWatch"]


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

    def __init__(self, url: str, *, create: bool | str = False, persist: bool | str = False,
                 servers: str | list[str] | None = None, history: int | str = 1, replicas: int | str = 1,
                 storage: str = "file", **conn: Any) -> None:
        parsed = parse_url(url)
        server, name, creds = _split_url(parsed, ("nats",))
        if not _BUCKET_RE.match(name):
            raise InvalidArgument(f"{url}: a KV bucket name is letters, digits, '_' and '-' only")
        create = parse_create(create)
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

    @overload
    def get(self, key: str) -> bytes: ...
    @overload
    def get(self, key: str, default: D) -> bytes | D: ...
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

    async def _delete(self) -> None:
        await _remove_retrying(lambda: self._js.delete_key_value(self.bucket), nats.js.errors.BucketNotFoundError,
                               self.url)

    def _close(self) -> None:
        self._disconnect()


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
                    self._kv._run(self._stop())

    async def _stop(self) -> None:
        await asyncio.wait_for(self._watcher.stop(), 2.0)

    def __enter__(self) -> KVWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

