"""``kipc.Queue`` / ``JoinableQueue`` / ``SimpleQueue``: multiprocessing's queues on the ring.

Contract card:

* Drop-in: same constructors (``Queue(maxsize=0, *, ctx=None)``, ``ctx`` checked as the
  stdlib checks it) and methods as ``multiprocessing``'s (``put/get`` with
  ``block``/``timeout``, ``put_nowait/get_nowait``, ``qsize/empty/full``, ``close``,
  ``join_thread``, ``cancel_join_thread``, ``task_done/join``), raising ``queue.Full`` /
  ``queue.Empty``; generic aliases (``Queue[int]``). Objects are pickled as
  multiprocessing pickles them (``ForkingPickler``, protocol 5, its reducers);
  out-of-band buffers of 64 KiB or more (numpy) go into the ring without a pickle
  copy and come out with one copy, into a block this process reuses once nothing
  refers to it (``_qpickle.alloc``). ``maxsize`` counts items. Any size: objects over half the ring stream
  through it in fragments; a timed ``get`` keeps a partial object and the next
  ``get`` resumes it.
* Sharing: works with ``multiprocessing.Process`` under fork, spawn and
  forkserver, and through ``os.fork``. A queue pickles to its name: the
  receiving process attaches to the same shared-memory ring.
* Better than the stdlib, on purpose: a pickling error raises at ``put()``
  (not later in a feeder thread); a producer or consumer killed mid-operation
  neither wedges the queue nor delivers a torn object; ``qsize()`` works
  everywhere. As in the stdlib, ``put()`` on an unbounded queue never blocks:
  when the ring (``capacity`` bytes, default 256 KiB, reserved at creation) is
  full, objects wait in this process's buffer and a feeder thread moves them in
  order (resuming a fragmented one, never restarting it); the buffer is flushed
  at exit unless ``cancel_join_thread()`` was called.
* Extras: ``put_many``/``get_many``; ``dumps=``/``loads=`` (a serializer instead of
  pickle); ``capacity=`` (ring bytes), ``name=`` (shm name, default a random one),
  ``spin=`` (µs a waiter spins before sleeping). docs/queues.md says when copies happen.

Cleanup (who removes ``/dev/shm/kipc.ring.NAME``): only the creating process.
When the creator's queue object is garbage collected and every pickled copy
has attached (a counter in the ring header), the name is removed at once;
otherwise at the creator's exit — a normal one, a multiprocessing child's
``os._exit`` (a ``util.Finalize``) or SIGTERM (a handler installed when SIGTERM
has its default action). Attached processes keep their mapping, so
they keep working after the name is gone. A creator killed by SIGKILL leaves
an owner record that ``kipc gc`` uses to remove the ring. The stdlib resource
tracker is not involved (it unlinks segments that others still use).
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import functools
import io
import itertools
import os
import pickle
import queue
import secrets
import signal
import struct
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from ._base import FOREVER, Deadline
from ._platform import native
from .errors import ChannelClosed, DeadlineExceeded, InvalidArgument
from .transports.ring import DEFAULT_SPIN_US, RingChannel

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

# 256 KiB: 100 queues fit Docker's 64 MiB /dev/shm; bigger objects stream through in fragments
DEFAULT_QUEUE_CAPACITY = 256 << 10
_HIGHEST = pickle.HIGHEST_PROTOCOL
_FEED_SLICE = 0.1
_OOB_MIN = 64 << 10  # PickleBuffers from this size travel out of band (smaller ones stay in the pickle)
_OOB_MAGIC = 0x42  # first byte of an out-of-band message (a pickle starts with 0x80, PROTO)
_OOB_HEAD = struct.Struct("<BxxxI")  # magic, number of buffers; then (n + 1) u64 lengths
_qp = native("_qpickle")
_plain_dumps, _plain_dumps_many, _plain_send = _qp.plain_dumps, _qp.plain_dumps_many, _qp.plain_send  # see _qpickle.c
_BIG_BYTES = _qp.BIG_BYTES  # bytes objects from this size are not copied into a pickle first
_MAX_BUFFERS = 31  # sendv takes 64 parts: head, then each buffer and its padding
_ZEROS = bytes(16)
_loads, _loads_many = _qp.loads, _qp.loads_many  # pickle.loads (small plain pickles read in C: _qpickle.c)
_NOW = Deadline(0)  # one attempt, no wait
_DRAIN_RUN = 256  # buffered messages moved per send_many (a bound on the time the buffer's lock is held)

# Rings whose creator object is gone but a pickled copy may still attach: removed at exit.
_deferred: set[RingChannel] = set()


def _unlink_at_exit() -> None:
    for ch in list(_deferred):
        _release(ch)
    _deferred.clear()


atexit.register(_unlink_at_exit)


def _release(ch: RingChannel) -> None:
    if ch.owner:  # the creating process only (Resource.owner checks pid and start time)
        ch.unlink()


def _finalize(ch: RingChannel) -> None:
    """The creator's queue object went away: remove the name now if nobody can still need it."""
    if ch.owner and ch._ring.add_pending(0) == 0:
        ch.unlink()
        _deferred.discard(ch)
    # else: a pickled copy has not attached yet; _unlink_at_exit removes it


def _deadline(block: bool, timeout: float | None) -> Deadline:
    """multiprocessing's (block, timeout) as the ring's deadline (FOREVER, or timeout 0 = one try)."""
    if not block:
        return _NOW  # expired: one attempt (a fresh Deadline(0) costs more than the attempt)
    if timeout is None:
        return FOREVER
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
    return Deadline(max(0.0, float(timeout)))


def _check_ctx(ctx: Any) -> None:
    """``ctx`` as multiprocessing takes it: None, a start-method name, or a context object."""
    if ctx is None:
        return
    import multiprocessing
    from multiprocessing.context import BaseContext

    if isinstance(ctx, str):
        multiprocessing.get_context(ctx)  # ValueError: cannot find context for 'bogus'
    elif not isinstance(ctx, BaseContext):
        raise TypeError(f"ctx must be a multiprocessing context or a start method name, not {type(ctx).__name__}")


# -- serialization: multiprocessing's ForkingPickler, reused -------------------------------
class _ForkingTable:
    """ForkingPickler's dispatch table, live: its registered reducers over ``copyreg``'s.

    ``ForkingPickler.__init__`` copies ``copyreg.dispatch_table`` and updates it with
    ``ForkingPickler._extra_reducers`` for every object; this mapping answers the
    same lookups without the copies, so one pickler can be reused.
    """

    __slots__ = ()

    def __getitem__(self, cls: type) -> Any:
        from multiprocessing.reduction import ForkingPickler

        fp: Any = ForkingPickler  # private class attributes, read as ForkingPickler.__init__ reads them
        try:
            return fp._extra_reducers[cls]
        except KeyError:
            return fp._copyreg_dispatch_table[cls]

    def get(self, cls: type, default: Any = None) -> Any:
        try:
            return self[cls]
        except KeyError:
            return default


class _Pickler:
    """Pickles as ``multiprocessing.reduction.ForkingPickler.dumps`` does (protocol 5), reusing
    one pickler; big ``PickleBuffer``s (numpy arrays) are collected out of band."""

    def __init__(self) -> None:
        from multiprocessing.reduction import ForkingPickler

        self._file = io.BytesIO()
        self._buffers: list[pickle.PickleBuffer] = []
        self._pickler = ForkingPickler(self._file, _HIGHEST, True, self._keep)  # (*args) only
        self._pickler.dispatch_table = _ForkingTable()  # type: ignore[assignment]
        self.lock = threading.Lock()

    def _keep(self, buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < _OOB_MIN or len(self._buffers) >= _MAX_BUFFERS:
            return True  # in band
        self._buffers.append(buf)
        return False

    def dumps(self, obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
        f = self._file
        try:
            self._pickler.dump(obj)
            return f.getvalue(), self._buffers
        finally:
            f.seek(0)
            f.truncate()
            self._pickler.clear_memo()
            self._buffers = []


_pickler_main = _Pickler()


def _encode(obj: Any) -> Any:
    """The message for ``obj``: pickle bytes, or a list of parts (header, pickle, buffers...)."""
    cls = type(obj)
    if cls is bytes and len(obj) >= _BIG_BYTES:
        # the very bytes pickle.dumps writes, as parts: the ring copies the object itself, once
        n = len(obj)
        return [b"\x80\x05" + (b"B" + struct.pack("<I", n) if n < 1 << 32 else b"\x8e" + struct.pack("<Q", n)),
                obj, b"\x94."]
    data = _plain_dumps(obj)  # plain builtins: byte for byte what ForkingPickler writes
    if data is not None:
        return data
    p = _pickler_main
    if not p.lock.acquire(False):  # another thread (or a reducer calling put): a fresh one
        p = _Pickler()
        p.lock.acquire()
    try:
        data, bufs = p.dumps(obj)
    finally:
        p.lock.release()
    if not bufs:
        return data
    raws = [b.raw() for b in bufs]
    head = _OOB_HEAD.pack(_OOB_MAGIC, len(raws)) + struct.pack(f"<{len(raws) + 1}Q", len(data),
                                                                 *(r.nbytes for r in raws))
    parts: list[Any] = [head + data + _ZEROS[:-(len(head) + len(data)) % 16]]
    for r in raws:  # each buffer at a 16-byte offset in the message (numpy's alignment)
        parts.append(r)
        if r.nbytes % 16:
            parts.append(_ZEROS[:-r.nbytes % 16])
    return parts


# Ring.recv_into's allocator: a fragmented message is reassembled into a block this process
# reuses once nothing refers to it (why and how: _qpickle.c, alloc)
_alloc = _qp.alloc


_BYTES_DATA = bytes.__basicsize__ - 1  # offset of a bytes object's data (CPython layout)


def _writable(data: bytes) -> memoryview:
    """A writable view of a bytes object nobody else holds (a message reassembled for this get)."""
    arr = (ctypes.c_char * len(data)).from_address(id(data) + _BYTES_DATA)
    arr._owner = data  # type: ignore[attr-defined]  # the view keeps the bytes alive
    return memoryview(arr).cast("B")


def _decode(msg: Any) -> Any:
    """Unpickle a message from the ring (bytes, or a view into the ring released by the caller)."""
    if not msg or msg[0] != _OOB_MAGIC:
        return pickle.loads(msg)
    mv = memoryview(msg)
    _, n = _OOB_HEAD.unpack_from(mv)
    lens = struct.unpack_from(f"<{n + 1}Q", mv, _OOB_HEAD.size)
    at = _OOB_HEAD.size + 8 * (n + 1)
    body = mv[at:at + lens[0]]
    at += lens[0]
    at += -at % 16
    # a reassembled message (a recv_into block, bytes, or the ring's memoryview over those
    # bytes) is ours alone: the arrays are built over it without a copy; a view into the ring
    # itself (read-only) is copied out
    owner = msg if msg.__class__ is bytes else mv.obj
    whole = _writable(owner) if owner.__class__ is bytes else mv if not mv.readonly else None
    buffers: list[Any] = []
    for ln in lens[1:]:
        # from a view into the ring: the one copy out (the ring's space is reused after this get)
        buffers.append(whole[at:at + ln] if whole is not None else bytearray(mv[at:at + ln]))
        at += ln + (-ln % 16)
    return pickle.loads(body, buffers=buffers)


def _unpack(data: Any, qsize: Callable[[], int], decode: Callable[[Any], Any]) -> Any:
    """get()'s uncommon messages (``_qpickle.getter``): out-of-band, a view, a user's ``loads=``."""
    if data.__class__ is bytes:
        return decode(data)
    with data:  # a memoryview into the ring: released (consumed) after unpickling
        obj = decode(data)
    qsize()  # raises BadObject if the ring was truncated under the view (it read zeros)
    return obj


#: the item type (like typeshed's multiprocessing.Queue[T]): ``q: kipc.Queue[int] = kipc.Queue()``;
#: ``Queue[int]`` works at run time too (Generic's alias, as the stdlib's SimpleQueue[int])
_T = TypeVar("_T")


class Queue(Generic[_T]):
    """A process-shared FIFO queue, API-compatible with ``multiprocessing.Queue``."""

    _joinable = False

    def __init__(self, maxsize: int = 0, *, ctx: Any = None, capacity: int | str = DEFAULT_QUEUE_CAPACITY,
                 name: str | None = None, spin: float = DEFAULT_SPIN_US,
                 dumps: Callable[[Any], Any] | None = None, loads: Callable[[Any], Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be int, not {type(maxsize).__name__}")
        _check_ctx(ctx)
        if (dumps is None) != (loads is None):
            raise InvalidArgument("dumps= and loads= go together (each undoes the other)")
        name = name or f"mpq-{os.getpid()}-{secrets.token_hex(6)}"
        ch = RingChannel(name, create=True, capacity=capacity, spin=spin)
        self._setup(ch, maxsize if maxsize > 0 else 0, dumps, loads)
        weakref.finalize(self, _finalize, ch).atexit = False  # exit is _unlink_at_exit's job
        _deferred.add(ch)  # until collected, the creator's exit removes it
        _watch_sigterm()

    def _setup(self, ch: RingChannel, maxsize: int, dumps: Any = None, loads: Any = None) -> None:
        self._ch = ch
        self._ring = ch._ring
        self._frag_max = int(ch._ring.frag_max)
        self._try_send = ch._ring.try_send
        self._dumps, self._loads = dumps, loads
        # get()'s C part; unpack (the uncommon messages) refers to the ring, not to this queue
        self._get = _qp.getter(ch._ring.recv_into, _alloc, functools.partial(
            _unpack, qsize=ch._ring.qsize, decode=_decode if loads is None else loads), loads is None)
        self._encode = _encode if dumps is None else dumps
        self._decode = _decode if loads is None else loads
        self._plain = loads is None  # messages are kipc's: a pickle, or out-of-band parts
        self._fast_put = maxsize == 0 and not self._joinable
        self._fast = self._fast_put and self._plain
        self._maxsize = maxsize
        self._closed = False
        self._lock = threading.Lock()  # guards the overflow buffer and the feeder
        self._buffer: collections.deque[Any] = collections.deque()
        self._feeder: threading.Thread | None = None
        self._streaming = False  # the feeder is sending buffer[0] (multi-part, in fragments)
        self._joincancelled = False
        _all.add(self)

    def _after_fork(self) -> None:
        # The child must not re-feed the parent's buffered objects (they are the parent's to send).
        self._lock = threading.Lock()
        self._buffer = collections.deque()
        self._feeder = None
        self._streaming = False

    # -- pickling: attach by name ------------------------------------------------------
    def __getstate__(self) -> tuple[Any, ...]:
        # a closed queue pickles too (as the stdlib's): close() ends this process's use only
        self._ring.add_pending(1)
        return (self._ch.name, self._maxsize, self._ch.spin, self._dumps, self._loads)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        name, maxsize, spin, dumps, loads = state
        ch = RingChannel(name, spin=spin)
        ch._ring.add_pending(-1)
        self._setup(ch, maxsize, dumps, loads)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._ch.url} maxsize={self._maxsize}>"

    # -- the API -------------------------------------------------------------------------
    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None:
        if self._closed:
            self._check_closed()
        if self._fast and not self._buffer:  # unbounded, not joinable, kipc's pickles, none buffered
            data = _plain_send(self._try_send, obj)  # a plain builtin: pickled and sent in one C call
            if data is True:
                return
        else:
            data = _plain_dumps(obj) if self._plain else None  # _encode's first case, without the call
        if data is None:
            data = self._encode(obj)  # a pickling error raises here, in the caller
            if self._fast_put and data.__class__ is bytes and not self._buffer and self._try_send(data):
                return  # room now
        self._put_data(data, block, timeout)

    def _put_data(self, data: Any, block: bool, timeout: float | None) -> None:
        deadline = _deadline(block, timeout)
        if self._joinable:
            self._ring.task_add(1)
        try:
            if self._maxsize == 0:
                self._put_unbounded(data)
            elif data.__class__ is list:
                self._ring.sendv(data, deadline, self._maxsize)
            else:
                self._ring.send(data, deadline, None, self._maxsize)
        except DeadlineExceeded:
            if self._joinable:
                self._ring.task_add(-1)
            raise queue.Full from None
        except BaseException:
            if self._joinable:
                self._ring.task_add(-1)
            raise

    def _put_now(self, data: Any) -> bool:
        """One attempt without waiting; a fragmented single buffer is resumed by the next attempt."""
        if data.__class__ is not list:
            return bool(self._try_send(data))
        if sum(memoryview(p).nbytes for p in data) > self._frag_max:
            return False  # a multi-part message bigger than one record: the feeder streams it
        try:
            self._ring.sendv(data, Deadline(0))
        except DeadlineExceeded:
            return False
        return True

    def _put_unbounded(self, data: Any) -> None:
        if not self._buffer and self._put_now(data):
            return
        with self._lock:  # the ring is full: keep order through the buffer, never block
            self._buffer.append(data)
            self._drain_or_feed()

    def _put_unbounded_many(self, datas: list[Any]) -> None:
        """put_many's messages the ring had no room for: into the buffer in one go, in order."""
        with self._lock:
            self._buffer.extend(datas)
            self._drain_or_feed()

    def _drain_or_feed(self) -> None:
        """Under ``self._lock``: the putting thread moves what fits itself (no GIL hand-off);
        the feeder thread moves the rest."""
        if self._drain():
            return
        if self._feeder is None:
            self._feeder = threading.Thread(target=self._feed, name="kipc.Queue feeder", daemon=True)
            self._feeder.start()
            _feeders.add(self)

    def _drain(self) -> bool:
        """Under ``self._lock``: move buffered messages into the ring while there is room.

        True when the buffer is empty. After the first message, the single-record ones
        that follow go in with one ``send_many`` (up to _DRAIN_RUN of them: one lock, one
        wake-up, instead of a call each). A fragmented single buffer is written as far as
        it fits and resumed by the next attempt (on the same object: the same claim,
        whichever thread makes it); a multi-part message the feeder is streaming is left
        to it.
        """
        buf = self._buffer
        limit = self._frag_max
        while buf:
            if self._streaming:
                return False
            if not self._put_now(buf[0]):  # (a full ring costs one failed try, not a run built)
                return False
            buf.popleft()
            if len(buf) > 1:
                run = []
                for d in itertools.islice(buf, _DRAIN_RUN):
                    if d.__class__ is not bytes or len(d) > limit:
                        break
                    run.append(d)
                if len(run) > 1:
                    try:
                        sent = int(self._ring.send_many(run, _NOW))
                    except DeadlineExceeded as e:
                        sent = int(getattr(e, "sent", 0))
                    except BaseException as e:  # those before the error were sent: never twice
                        for _ in range(int(getattr(e, "sent", 0))):
                            buf.popleft()
                        raise
                    for _ in range(sent):
                        buf.popleft()
                    if sent < len(run):
                        return False
        return True

    def _feed(self) -> None:
        ring = self._ring
        while True:
            with self._lock:
                if self._drain():
                    self._feeder = None
                    _feeders.discard(self)
                    return
                data = self._buffer[0]
                stream = data.__class__ is list  # _put_now refused it: bigger than one record
                self._streaming = stream
            try:
                if stream:
                    try:
                        ring.sendv(data, FOREVER)  # holds the producer lock across its fragments: never restarted
                    finally:
                        with self._lock:
                            self._streaming = False
                    with self._lock:
                        self._buffer.popleft()
                    continue
                if self._joincancelled and _exiting:
                    return
                ring.wait("send", Deadline(_FEED_SLICE))  # also keeps a producer claim's beat fresh
            except ChannelClosed:
                return

    def put_nowait(self, obj: _T) -> None:
        self.put(obj, False)

    def put_many(self, objs: Iterable[_T], block: bool = True, timeout: float | None = None) -> None:
        """Put each object in order. Every object is serialized first, so a pickling error
        raises before any of them is sent; ``queue.Full`` (bounded queues) may come after some."""
        if self._closed:
            self._check_closed()
        encode = self._encode
        objs = objs if objs.__class__ is list else list(objs)
        if not objs:
            return
        datas = _plain_dumps_many(objs) if self._plain else None  # the batch in one C call
        if datas is None:
            datas = list(map(encode, objs))
            plain = False
        else:
            plain = True  # all single bytes objects (pickles)
        if self._fast_put:
            i = 0
            if not self._buffer:
                # the ring's batch call for the leading single-record messages (one lock, one
                # wake-up); a message in fragments, or no room now, goes the unbounded way
                limit, n = self._frag_max, len(datas)
                if plain and max(map(len, datas)) <= limit:
                    i = n
                else:
                    while i < n and datas[i].__class__ is bytes and len(datas[i]) <= limit:
                        i += 1
                if i:
                    try:
                        i = int(self._ring.send_many(datas[:i] if i < n else datas, _NOW))
                    except DeadlineExceeded as e:
                        i = int(getattr(e, "sent", 0))
            if i < len(datas):
                self._put_unbounded_many(datas[i:] if i else datas)
            return
        deadline = _deadline(block, timeout)
        for d in datas:
            self._put_data(d, True, deadline.remaining()) if block else self._put_data(d, False, None)

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        if self._closed:
            self._check_closed()
        try:
            # the ring's recv_into(_alloc, deadline, view=2) and the unpickling, in C (_qpickle.getter):
            # big messages come back as a view into the ring (one copy fewer); fragmented ones are
            # reassembled into a reused block (_alloc). A timeout mid-way through a fragmented
            # message keeps the part received: the next get resumes it.
            return self._get(FOREVER if block and timeout is None else _deadline(block, timeout))
        except DeadlineExceeded:
            raise queue.Empty from None

    def get_nowait(self) -> _T:
        return self.get(False)

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list[_T]:
        """1 to ``max_items`` objects: waits (``block``/``timeout``) for the first, then takes
        what is there now (``Ring.recv_many``). ``queue.Empty`` when none came."""
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"max_items must be an int >= 1, not {max_items!r}")
        if self._closed:
            self._check_closed()
        try:
            # the ring's batch call: waits for the first like get(), then takes what is there
            got = self._ring.recv_many(max_items, FOREVER if block and timeout is None else _deadline(block, timeout))
        except DeadlineExceeded:
            raise queue.Empty from None
        if self._plain:
            objs = _loads_many(got)  # all pickles (no out-of-band message): read in one C loop
            if objs is not None:
                return objs
            return [_decode(m) if not m or m[0] == _OOB_MAGIC else _loads(m) for m in got]
        decode = self._decode
        return [decode(m) for m in got]

    def qsize(self) -> int:
        """Items in the queue (including this process's not yet fed ones)."""
        return int(self._ring.qsize()) + len(self._buffer)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self._maxsize > 0 and self.qsize() >= self._maxsize

    def close(self) -> None:
        """This process will put and get no more (the queue lives on for the others)."""
        self._closed = True

    def join_thread(self) -> None:
        """Wait until this process's buffered objects are in the ring (after ``close()``)."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        feeder = self._feeder
        if feeder is not None and not self._joincancelled:
            feeder.join()

    def cancel_join_thread(self) -> None:
        """Do not wait for buffered objects at exit (they may be lost)."""
        self._joincancelled = True


class JoinableQueue(Queue[_T]):
    """``Queue`` plus ``task_done()`` / ``join()``; the unfinished count lives in the ring header."""

    _joinable = True

    def task_done(self) -> None:
        self._ring.task_done()

    def join(self, timeout: float | None = None) -> bool | None:
        """Block until every item put has been ``task_done()``'d; returns None, as the stdlib's.

        ``timeout`` (a kipc extension): then returns whether the count reached zero in time.
        """
        if timeout is None:
            self._ring.join(FOREVER)
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgument(f"timeout {timeout!r} must be None or >= 0")
        return bool(self._ring.join(Deadline(float(timeout))))


class SimpleQueue(Generic[_T]):
    """``multiprocessing.SimpleQueue`` on the ring: ``put``, ``get``, ``empty``, ``close``."""

    def __init__(self, *, ctx: Any = None, capacity: int | str = DEFAULT_QUEUE_CAPACITY,
                 name: str | None = None, spin: float = DEFAULT_SPIN_US,
                 dumps: Callable[[Any], Any] | None = None, loads: Callable[[Any], Any] | None = None) -> None:
        self._q: Queue[_T] = Queue(ctx=ctx, capacity=capacity, name=name, spin=spin, dumps=dumps, loads=loads)
        self._closed = False

    def __getstate__(self) -> Queue:
        return self._q

    def __setstate__(self, q: Queue) -> None:
        self._q = q
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def put(self, obj: _T) -> None:
        self._check()
        self._q.put(obj)

    def get(self) -> _T:
        self._check()
        return self._q.get()

    def put_many(self, objs: Iterable[_T]) -> None:
        self._check()
        self._q.put_many(objs)

    def get_many(self, max_items: int) -> list[_T]:
        self._check()
        return self._q.get_many(max_items)

    def empty(self) -> bool:
        self._check()
        return self._q.empty()

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"<SimpleQueue {self._q._ch.url}>"


# -- SIGTERM (Process.terminate): remove this process's rings, then die of the signal ---------
_sigterm_watched = False


def _on_sigterm(signum: int, frame: Any) -> None:
    _unlink_at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # the exit status stays "killed by SIGTERM"


def _watch_sigterm() -> None:
    """The first queue created in a process whose SIGTERM does the default (die at once)
    installs ``_on_sigterm``; a handler of the program's own is left alone."""
    global _sigterm_watched
    if _sigterm_watched or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_watched = True
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        pass


# -- flushing at exit (like the stdlib's feeder join) -----------------------------------
_feeders: weakref.WeakSet[Queue] = weakref.WeakSet()
_exiting = False


def _flush_feeders() -> None:
    global _exiting
    _exiting = True
    for q in list(_feeders):
        feeder = q._feeder
        if feeder is not None and not q._joincancelled:
            feeder.join()


_all: weakref.WeakSet[Queue] = weakref.WeakSet()


class _Hook:
    pass


_hook = _Hook()


def _register_flush(_: object = None) -> None:
    # multiprocessing children leave through util._exit_function + os._exit (no atexit);
    # its finalizers run in the parent (via atexit) and in children, where the registry
    # is cleared after fork, hence the re-registration after each fork.
    from multiprocessing import util

    util.Finalize(None, _flush_feeders, exitpriority=-5)
    # ... and remove the rings this process created (fork/forkserver children never run atexit)
    util.Finalize(None, _unlink_at_exit, exitpriority=-10)


def _mp_after_fork(_: object = None) -> None:
    # in a multiprocessing child, a queue its parent had closed is open again (as the stdlib's)
    for q in list(_all):
        q._closed = False
    _register_flush()


def _reset_after_fork() -> None:
    global _exiting
    _exiting = False
    _feeders.clear()
    for q in list(_all):
        q._after_fork()


def _install_hooks() -> None:
    from multiprocessing import util

    _register_flush()
    util.register_after_fork(_hook, _mp_after_fork)
    os.register_at_fork(after_in_child=_reset_after_fork)


_install_hooks()
