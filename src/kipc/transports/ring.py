"""ring:// — kipc's shared-memory ring: the fastest channel between processes of one user.

Contract card:

* Object: POSIX shm ``/kipc.ring.NAME`` (``/dev/shm/kipc.ring.NAME``): a 4 KiB
  header + ``capacity`` data bytes (rounded up to a power of two, at least
  4 KiB, so offsets stay continuous when the 64-bit counters wrap; default
  1 MiB). A capacity larger than the free space of ``/dev/shm`` is refused
  with ``LimitExceeded`` before anything is created.
  Theory of operation (memory ordering, crash cases): ``kipc/_native/ring/ring_core.h``.
* Peers: any number of producers and consumers in any processes of the same
  user; ``kipc.open("ring://NAME")`` attaches. Every end can send and receive.
* Boundaries: kept. Ordering: FIFO per producer (commits are serialized, so
  FIFO overall). Size: any; a message over ``capacity/2 - 16`` bytes travels
  in fragments and a consumer only ever returns whole messages. The consumer
  that takes a message's first fragment *claims* it: if its ``recv`` times out
  mid-message, the part received so far stays with this handle and the next
  ``recv`` on the same handle (any thread) resumes it; other consumers wait
  for the claim meanwhile (within their own timeouts). Closing a handle
  mid-message drops that message (as a killed consumer's); the producer's
  timeout or death ends a message, never a partial.
* Blocking: ``send`` blocks while the ring is full, ``recv`` while it is empty;
  ``timeout=None|0|t``, honoured even while a SIGSTOPped peer holds a lock
  (locks are taken with a deadline; nobody waits for data or space holding
  one). Waits spin ``spin`` µs (default 50, ``spin=0`` pure futex sleep), then
  sleep on a shared futex; GIL released (after the first ~2 µs of the spin); Ctrl-C gets through.
* Threads: any number of threads may send and receive on one handle. ``close()``
  from any thread wakes this process's calls blocked on the handle within
  100 ms with ``ChannelClosed`` ("closed by this process"); the mapping stays
  until the last call in flight has left. A view still held at close keeps the
  mapping until released (releasing it consumes its message); a loan still
  open publishes nothing (``commit`` raises ``ChannelClosed``).
* asyncio: ``asend/arecv`` wait for readiness in C (a futex wait that consumes
  nothing and holds no lock, in kipc's wait threads), then make the
  non-blocking attempt on the loop thread: a cancelled call loses nothing.
  Messages over ``capacity/2 - 16`` bytes work too, even with producer and
  consumer on one loop: an attempt writes (or takes) the fragments there is
  room for and the next attempt resumes; a cancelled ``asend`` mid-message
  delivers nothing (its half is dropped, and other producers take over its
  claim after at most 1 s).
* Hooks (template v2): ``_send_blocking(data, deadline, knobs)``,
  ``_recv_blocking(deadline, knobs)``, ``_try_send(data, knobs) -> bool``,
  ``_try_recv(knobs) -> bytes | memoryview | None``, ``_wait(op, deadline)``,
  ``_ready(op)`` are the C methods themselves (``Ring.send/recv/try_send/
  try_recv/wait/ready``), bound per handle; ``_wait_fd`` is None;
  ``_interrupt`` calls ``Ring.interrupt``; ``_close`` calls ``Ring.unmap``.
* Zero-copy: ``send`` copies once from any C-contiguous buffer; ``with
  ch.loan(n) as buf:`` writes in place; ``recv(view=True)`` returns a read-only
  memoryview into the ring: the message is consumed (and other consumers of the
  ring wait) until you ``release()`` it, in the same thread; ``arecv`` refuses
  ``view=True``. ``send_array`` /
  ``recv_array`` move numpy arrays (dtype + shape) without pickle.
* Crash safety: robust process-shared mutexes + a commit journal; a peer
  SIGKILLed anywhere neither wedges the ring nor delivers a torn message.
* Security: created exclusively (``create=True``; ``"if_missing"`` attaches to
  an existing one), mode 0600 whatever the umask; attaching refuses objects of
  another uid, with group/other bits, of the wrong type or size, or without
  kipc's header (checked with fstat before mmap, then magic/version/sizes).
  A peer truncating the object after attach cannot SIGBUS us: the ring's calls
  raise ``BadObject`` (see the crash cases in ``_native/ring/ring_core.h``).
* Close: ``close()`` by the creator marks the ring closed (blocked peers get
  ``ChannelClosed`` once it is empty), removes the name and its owner record;
  ``persist=True`` keeps both and records no owner. Openers never remove.
  ``kipc gc`` removes rings whose creator died (owner record).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, overload

from .. import _owners
from .._base import _TIMEOUT_MAX, FOREVER, Channel, Deadline
from .._kinds import RING_PREFIX, DevShmKind, ObjectInfo
from .._naming import parse_bool, parse_float, validate_mode, validate_name, validate_size
from .._objects import check_attach, file_identity, open_path, parse_create, remove_path
from .._platform import native
from ..codecs import Codec, get_codec
from ..errors import (
    AlreadyExists,
    BadObject,
    ChannelClosed,
    InvalidArgument,
    LimitExceeded,
    MessageTooLarge,
    ProtocolError,
    Timeout,
    WouldBlock,
    from_oserror,
)
from ._arrays import ARRAY_PREFIX, ArrayMethods

__all__ = ["DEFAULT_CAPACITY", "KIND", "RingChannel", "shm_path"]

_ring = native("_ring")
_ring._setup(Timeout, WouldBlock, ChannelClosed, BadObject, FOREVER, ProtocolError)  # FOREVER: the C hot path knows it

DEFAULT_CAPACITY = 1 << 20
DEFAULT_SPIN_US = 50.0
_PAGE = 4096
_BYTES = get_codec(None)
_ATTACH_WAIT = 0.5  # seconds an opener waits for a creator to finish initialising
def shm_path(name: str) -> str:
    """Where ``ring://NAME`` lives: ``/dev/shm/kipc.ring.NAME``."""
    return f"/dev/shm/kipc.ring.{name}"


class RingChannel(ArrayMethods, Channel):
    """One process's handle on a ``ring://`` channel (see the module docstring)."""

    scheme = "ring"
    recv_knobs = frozenset({"view"})
    duplex = True
    _ring: Any = None
    _max_size: int | None = None

    def __init__(self, name: str, *, create: bool | str = False, capacity: int | str = DEFAULT_CAPACITY,
                 mode: int = 0o600, persist: bool = False, spin: float = DEFAULT_SPIN_US,
                 codec: str | Codec | None = None, max_message_size: int | None = None) -> None:
        name = validate_name(name, what="ring name")
        url = f"ring://{name}"
        create = parse_create(create)
        cap = validate_size(capacity, what="capacity", minimum=_PAGE, maximum=1 << 40)
        cap = 1 << (cap - 1).bit_length()  # a power of two (see the module docstring)
        mode = validate_mode(mode)
        persist = parse_bool(persist, what="persist")
        if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 <= spin <= 1e6:
            raise InvalidArgument(f"spin {spin!r} must be a number of microseconds in [0, 1e6]")
        if max_message_size is not None:
            max_message_size = validate_size(max_message_size, what="max_message_size", minimum=1)
        path = shm_path(name)
        if create:
            _check_room(url, cap)
        fd, created = open_path(path, url, create, mode)
        try:
            pid, start = _owners.self_owner()
            if created:
                os.fchmod(fd, mode)  # the umask filtered open()'s mode
                try:
                    _reserve(fd, url, _PAGE + cap)  # tmpfs pages now, or LimitExceeded (never SIGBUS later)
                    self._ring = _ring.Ring(fd, url, True, cap, pid, start or 0, spin * 1e-6)
                except BaseException:
                    os.unlink(path)
                    raise
                self.owner = True
                if persist:
                    _owners.forget(url)  # a stale record of a dead creator must not make gc collect this one
                else:
                    _owners.record(url, "ring", path=path, capacity=cap, identity=file_identity(os.fstat(fd), fd=fd))
            else:
                _check_attach(fd, url)
                self._ring = _ring.Ring(fd, url, False, 0, pid, start or 0, spin * 1e-6)
        except OSError as e:
            if isinstance(e, (BadObject, AlreadyExists)) or type(e).__module__.startswith("kipc"):
                raise
            raise from_oserror(e, url, "create" if created else "open") from e
        finally:
            os.close(fd)  # the mapping keeps the object; no fd is held
        self.name, self.path, self.persist = name, path, persist
        self.max_message_size = max_message_size
        self._bind_hooks()
        self._init_channel(url, codec=codec)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_url(cls, parsed: Any, **options: Any) -> RingChannel:
        from .._naming import merge_query

        opts: dict[str, Any] = dict(merge_query(parsed, options))
        if parsed.path not in ("", "/"):
            raise InvalidArgument(f"{parsed.url}: a ring URL is ring://NAME (no path)")
        if isinstance(opts.get("mode"), str):
            opts["mode"] = validate_mode(opts["mode"])
        if isinstance(opts.get("spin"), str):
            opts["spin"] = parse_float(opts["spin"], what="spin")
        if isinstance(opts.get("max_message_size"), str):
            opts["max_message_size"] = validate_size(opts["max_message_size"], what="max_message_size")
        return cls(parsed.netloc, **opts)

    # -- hooks of the template: the C methods themselves, bound in __init__ (no Python frame
    # on the hot path); semantics in the contract card above and in ring_core.h -------------------
    def _bind_hooks(self) -> None:
        ring = self._ring
        self._send_blocking = ring.send  # type: ignore[method-assign]  # (data, deadline, knobs)
        self._recv_blocking = ring.recv  # type: ignore[method-assign]  # (deadline, knobs)
        self._send_until, self._recv_until = ring.send, ring.recv  # they take a float deadline too
        self._try_send = ring.try_send  # type: ignore[method-assign]  # (data, knobs) -> bool
        self._try_recv = ring.try_recv  # type: ignore[method-assign]  # (knobs) -> message | None
        self._wait = ring.wait  # type: ignore[method-assign]  # (op, deadline) -> None
        self._ready = ring.ready  # type: ignore[method-assign]  # (op) -> bool

    def _fast_calls(self) -> tuple[Any, Any]:
        # send(bytes)/recv() with no Python frame: ~150 ns of a ~250 ns call (docs/design.md)
        return self._ring.fast(self, Channel.send, Channel.recv, self._max_size, _TIMEOUT_MAX)

    @property
    def max_message_size(self) -> int | None:
        """The largest message this handle sends (None: the ring's own limit, its capacity)."""
        return self._max_size

    @max_message_size.setter
    def max_message_size(self, limit: int | None) -> None:
        self._max_size = limit
        self._refresh_fast()  # the fast send captured the old one

    if TYPE_CHECKING:  # run time: Channel.recv; the overloads give view=True its type
        @overload
        def recv(self, *, timeout: float | None = None, view: Literal[False] = False, **knobs: Any) -> bytes: ...
        @overload
        def recv(self, *, timeout: float | None = None, view: Literal[True], **knobs: Any) -> memoryview: ...
        @overload
        def recv(self, *, timeout: float | None = None, view: bool, **knobs: Any) -> bytes | memoryview: ...
        def recv(self, *, timeout: float | None = None, **knobs: Any) -> Any: ...

    def _wait_fd(self, op: str) -> int | None:
        return None  # shared memory has no fd: async waits run _wait (a futex) in kipc's threads

    def _interrupt(self) -> None:
        ring = self._ring
        if ring is not None:
            ring.interrupt()  # wakes this process's calls on this handle: ChannelClosed
        super()._interrupt()

    def _quiesce(self) -> list[Any]:
        return []  # the C side counts calls in flight; the last one out unmaps (see _close)

    def close(self) -> None:
        # Only an explicit close by the creating process ends the channel for everyone
        # (not a finalizer, not a forked child's copy).
        if not self._closed and self.owner and not self.persist:
            self._ring.mark_closed()
        super().close()

    def _close(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.unmap()  # deferred while calls, views or loans are in flight on this handle
        super()._close()

    def _unlink(self) -> None:
        remove_path(self.path, self.url)

    def fileno(self) -> int:
        self._check_open("fileno")
        return super().fileno()  # Unsupported: shared memory has no fd to poll

    # -- extras ----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        self._check_open("capacity")
        return int(self._ring.capacity)

    @property
    def spin(self) -> float:
        """Microseconds a waiter spins before sleeping on the futex."""
        self._check_open("spin")
        return float(self._ring.spin) * 1e6

    @spin.setter
    def spin(self, us: float) -> None:
        self._check_open("spin")
        if isinstance(us, bool) or not isinstance(us, (int, float)) or not 0 <= us <= 1e6:
            raise InvalidArgument(f"spin {us!r} must be a number of microseconds in [0, 1e6]")
        self._ring.spin = us * 1e-6

    def qsize(self) -> int:
        """Committed messages not yet received."""
        self._check_open("qsize")
        return int(self._ring.qsize())

    def info(self) -> dict[str, Any]:
        """Header fields: capacity, owner pid/start, head, tail, message counts."""
        self._check_open("info")
        return dict(self._ring.info())

    def send_many(self, objs: Iterable[Any], *, timeout: float | None = None) -> int:
        """Send each object as one message, in order, all within one ``timeout``; returns how many.

        The guarantees of :meth:`send` hold per message. On an error the messages
        before it were sent; the exception's ``sent`` attribute says how many.
        """
        deadline = Deadline.of(timeout)
        self._check_open("send")
        if self.codec is _BYTES and self.max_message_size is None:
            return int(self._ring.send_many(objs, deadline))
        return int(self._ring.send_many((self._prepare_send(o, {}) for o in objs), deadline))

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """Up to ``max_n`` messages: waits for the first like :meth:`recv`, then takes what is there.

        Returns at least one message, or raises ``Timeout``/``WouldBlock`` as ``recv``.
        An error met after the first message ends the batch (the next call raises it);
        nothing received is dropped.
        """
        deadline = Deadline.of(timeout)
        self._prepare_recv({})
        if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
            raise InvalidArgument(f"recv_many: max_n {max_n!r} must be an integer >= 1")
        got = self._ring.recv_many(max_n, deadline)
        if self.codec is _BYTES:
            return got
        decode = self.codec.decode
        return [decode(m) for m in got]

    @contextlib.contextmanager
    def loan(self, n: int, *, timeout: float | None = None) -> Iterator[memoryview]:
        """Reserve ``n`` bytes in the ring; the block's normal exit publishes them as one message.

        An exception aborts (nothing is published). Other producers wait while a
        loan is open; finish it in the thread that took it. Views made of the buffer
        (``np.frombuffer(buf, ...)``) may stay alive: the message is published when the
        ``with`` block ends all the same, and the memory stays mapped while they live,
        but they must not be used after the block (writes would land in a published
        message that a consumer may be reading).
        """
        deadline = Deadline.of(timeout)
        self._check_open("loan")
        n = validate_size(n, what="loan size")
        limit = int(self._ring.frag_max)
        if n > limit:
            raise MessageTooLarge(f"loan on {self.url}: {n} bytes exceeds the in-place limit of {limit} bytes "
                                  "(capacity/2 - 16; use send() for bigger messages)", size=n, limit=limit)
        loan = self._ring.loan(n, deadline)
        with lent(loan, lambda: loan.commit(n)) as buf:
            yield buf

    # -- the array methods' hooks (kipc.transports._arrays) ---------------------------------------
    def _send_parts(self, parts: tuple[bytes, Any], size: int, deadline: Deadline) -> None:
        self._check_open("send")
        self._ring.sendv(parts, deadline)

    def _recv_array_view(self, deadline: Deadline, copy: bool) -> memoryview:
        self._check_open("recv")
        try:
            got = self._ring.recv(deadline, None, 1, ARRAY_PREFIX)
        except ProtocolError as e:
            raise ProtocolError(f"recv_array: {e}") from None
        return got if type(got) is memoryview else memoryview(got)  # one export to release

    def _not_an_array(self, mv: memoryview, what: str) -> ProtocolError:
        """The message in view `mv` is not an array: give it back to the ring if it is still there."""
        keep = getattr(mv.obj, "keep", None)  # a RingView: releasing it will not consume the message
        if keep is not None:
            keep()
            return ProtocolError(f"recv_array on {self.url}: {what}; it stays in the ring (receive it with recv())")
        return ProtocolError(f"recv_array on {self.url}: {what} (a fragmented message: it was consumed)")


@contextlib.contextmanager
def lent(loan: Any, commit: Callable[[], object]) -> Iterator[memoryview]:
    """The ``with`` block of a ring's or a ring topic's ``loan()``: the loaned space as a memoryview;
    the block's normal exit commits, an exception aborts (first of all: the producer lock must go
    whatever else fails). The view is released unless views made of it are alive (they keep the
    mapping)."""
    try:
        buf = memoryview(loan)
    except BaseException:
        loan.abort()
        raise
    try:
        yield buf
    except BaseException:
        loan.abort()
        raise
    else:
        commit()
    finally:
        with contextlib.suppress(BufferError):
            buf.release()


def _check_room(url: str, cap: int) -> None:
    """Refuse a ring /dev/shm cannot hold: tmpfs would accept the ftruncate, then SIGBUS a later write."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return  # no /dev/shm to measure: shm_open will say what is wrong
    free = st.f_bavail * st.f_frsize
    if cap + _PAGE > free:
        raise LimitExceeded(f"create {url}: capacity {cap} + {_PAGE} header bytes exceed the {free} bytes free "
                            "in /dev/shm (tmpfs size: `df /dev/shm`, `mount -o remount,size=... /dev/shm`)")


def _reserve(fd: int, url: str, size: int) -> None:
    """Allocate the whole object now (``posix_fallocate``), so a full ``/dev/shm`` fails here.

    tmpfs allocates pages when they are first touched: without this, a ring created
    while there was room would SIGBUS (``BadObject``) mid-traffic once others fill
    ``/dev/shm``. Called on the creator's fd before the native ``ftruncate`` (which
    then finds the size already right).
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # a file system without fallocate: the statvfs check above is all we have
            raise from_oserror(e, url, "create") from e
        try:
            st = os.statvfs("/dev/shm")
            room = f"{st.f_blocks * st.f_frsize} bytes, {st.f_bavail * st.f_frsize} free"
        except OSError:
            room = "size unknown"
        raise LimitExceeded(f"create {url}: cannot reserve {size} bytes in /dev/shm ({room}; "
                            "`df /dev/shm`, `mount -o remount,size=... /dev/shm`, or a smaller capacity=)") from e


def _check_attach(fd: int, url: str) -> None:
    check_shm_attach(fd, url, what="ring", magic=_ring.MAGIC, others={
        native("_topic").MAGIC: "this is a ring topic, not a channel (open it with kipc.Topic)"})


def check_shm_attach(fd: int, url: str, *, what: str, magic: int, others: dict[int, str]) -> None:
    """Refuse what is not a /dev/shm object of ours (a ring or a ring topic, told apart by ``magic``):
    type, owner, mode, size, then wait for the magic; ``others`` names kipc objects opened as the
    wrong kind."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise BadObject(f"open {url}: not a regular shared-memory object")
    # no allow_foreign/mode= knobs: only this uid's 0600 objects are attached
    check_attach(url, uid=st.st_uid, mode=st.st_mode, allowed_mode=0o600,
                 foreign_hint=f"a {what} is attached only by its owner's uid",
                 mode_hint=f"a {what} is attached only with mode 0600")
    want = struct.pack("<Q", magic)
    wrong = {struct.pack("<Q", m): hint for m, hint in others.items()}
    end = time.monotonic() + _ATTACH_WAIT
    while True:  # a creator between O_EXCL and publishing its header: give it a moment
        size = os.fstat(fd).st_size
        found = os.pread(fd, 8, 0) if size >= 8 else b""
        if size >= 2 * _PAGE and found == want:
            return
        if found in wrong:
            raise BadObject(f"open {url}: {wrong[found]}")
        initialising = size < 2 * _PAGE or found == bytes(8)  # the creator publishes the magic last
        if not initialising or time.monotonic() >= end:
            raise BadObject(f"open {url}: {size} bytes without a kipc {what} header (truncated, foreign, "
                            "or its creator died while initialising)")
        time.sleep(0.005)


# -- object kind: how kipc ls / rm / gc see rings -----------------------------------------------------------
class _RingKind(DevShmKind):
    def describe(self, name: str, path: str, st: os.stat_result) -> ObjectInfo:
        info = super().describe(name, path, st)
        try:  # depth and messages ever sent: attach for an instant (refused for others' rings: no figures)
            with RingChannel(name) as ring:
                for _ in range(5):
                    # the fields are loaded one by one while peers move them (head before tail, so
                    # a fast consumer can make ``used`` exceed the capacity for one read): retry
                    header = ring.info()
                    depth = int(header["msgs_in"]) - int(header["msgs_out"])
                    used = int(header["tail"]) - int(header["head"])
                    if 0 <= depth and 0 <= used <= int(header["capacity"]):  # from shared memory: only if sane
                        info.depth, info.queued = depth, used
                        break
            # the counters only grow: kipc top's rates need them even when no read gave a sane depth
            info.total, info.bytes_total = int(header["msgs_in"]), int(header["tail"])
        except Exception:
            pass
        return info


KIND = _RingKind("ring", "ring", RING_PREFIX, part="", records=("ring",), description="ring (/dev/shm/kipc.ring.NAME)")
