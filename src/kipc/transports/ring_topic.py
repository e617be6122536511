"""RingTopic — publish/subscribe on ring://: a broadcast shared-memory topic.

Contract card:

* Object: POSIX shm ``/dev/shm/kipc.ring.NAME``, the namespace of ``ring://`` (so a name is
  either a channel or a topic, never both): a header (identity, publisher lock, commit word,
  ``max_subscribers`` cursor slots; a multiple of 4 KiB) + ``capacity`` data bytes (rounded up
  to a power of two, 4 KiB .. 4 GiB; default 1 MiB). Its magic ("KKPCTOPC") differs from a
  ring channel's: ``RingChannel`` refuses a topic and ``RingTopic`` a channel with
  ``BadObject``. Theory of operation (memory ordering, crash cases, checks):
  ``kipc/_native/topic/topic_core.h``. The creator allocates every page (``posix_fallocate``)
  and fills its page tables (``MADV_POPULATE_WRITE``, ~0.4 ms per MiB of capacity); so does a
  subscriber when it joins and any other handle at its first publish (a handle that only reads
  the header, like ``kipc ls``'s, maps no more). So the first lap of the buffer takes no page
  faults (they had cost camera frames about three times the copy itself).
* ``RingTopic("ring://cam?capacity=64MiB", create=True, subscribe=False)`` creates and
  publishes; ``RingTopic("ring://cam")`` attaches and subscribes. Every handle can publish;
  a subscribing handle (``subscribe=True``, the default) takes one of ``max_subscribers``
  slots (fixed at creation, default 16, at most 1024); when every slot belongs to a live
  process, subscribing raises ``LimitExceeded``.
* Delivery: every subscriber receives every message published after it subscribed, whole and
  in publish order (publishers are serialized, so one order for all); ``history=N`` starts it
  at the N-th last message still in the buffer. Many publishers in any processes.
* Size: a message is at most ``capacity/2 - 16`` bytes (one record, no fragments);
  a bigger one is ``MessageTooLarge`` naming both numbers, before anything is written.
* ``overflow="block"`` (default, lossless): ``send`` blocks (``timeout=None|0|t``) while the
  slowest live subscriber has not consumed the space it needs; with no subscriber nothing
  blocks (the oldest messages are overwritten; they serve ``history=``).
  ``overflow="drop_oldest"``: ``send`` never waits for subscribers; a subscriber that falls
  behind skips to the oldest message still there and ``.dropped`` counts exactly the messages
  it missed (a copy overwritten while it was made is discarded and counted, never returned).
  The mode is fixed at creation; an opener's ``overflow=`` must match (``InvalidArgument``).
* Crash safety: a subscriber that dies (even SIGKILL) never wedges publishers: a publisher
  held back by its slot for 10 ms checks its owner (pid + process start time) and frees the
  slot. A publisher killed holding the lock is detected the same way and its half-written
  record is never delivered. Nothing read from the shared header is trusted: a corrupt value
  raises ``BadObject`` (and marks the topic broken for every peer), never a crash or a hang.
* Zero-copy: ``recv(view=True)`` returns a read-only memoryview into the buffer (overflow=block
  only: the message is pinned, publishers wait for it, until you ``release()`` it; the next
  ``recv`` on the handle raises until then); ``with topic.loan(n) as buf:`` /
  ``loan_array(shape, dtype)`` fill a message in place (the publisher lock is held meanwhile:
  other publishers wait; an exception publishes nothing; a process killed mid-loan publishes
  nothing and its lock is taken over); ``send_array``/``recv_array`` move numpy arrays (the ring
  channel's array format).
* Blocking, threads, asyncio, close: the channel template's (``kipc._base``): waits spin ``spin``
  µs, then sleep on a shared futex in 50 ms slices, GIL released, Ctrl-C gets through; ``arecv``
  / ``asend`` wait for readiness in kipc's wait threads and then attempt on the loop thread (a
  cancellation loses nothing); ``kipc.wait`` works (``_wait``/``_ready``, no fd). ``close()``
  from another thread wakes this handle's blocked calls with ``ChannelClosed``. The creator's
  ``close()`` marks the topic closed (subscribers get ``ChannelClosed`` once they have received
  what was published) and removes it; openers never remove. A forked child may use an inherited
  handle: as a subscriber it gets its own slot, continuing from the handle's position.
* Security: created exclusively (``create=True``; ``"if_missing"`` attaches to an existing one),
  mode 0600 whatever the umask; attaching refuses another uid's objects, group/other bits, the
  wrong type or size (fstat before mmap), then checks magic, version and geometry.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from .. import _owners
from .._base import FOREVER, Channel, Deadline
from .._naming import (
    ParsedURL,
    merge_query,
    parse_bool,
    parse_float,
    parse_url,
    validate_mode,
    validate_name,
    validate_size,
)
from .._objects import file_identity, open_path, parse_create, remove_path
from .._platform import native
from ..codecs import Codec
from ..errors import (
    AlreadyExists,
    BadObject,
    ChannelClosed,
    InvalidArgument,
    LimitExceeded,
    MessageTooLarge,
    ProtocolError,
    Timeout,
    Unsupported,
    WouldBlock,
    from_oserror,
)
from ._arrays import ArrayMethods
from .ring import _check_room, _reserve, check_shm_attach, lent, shm_path

__all__ = ["OVERFLOW_MODES", "RingTopic"]

_topic = native("_topic")
_topic._setup(Timeout, WouldBlock, ChannelClosed, BadObject, LimitExceeded, Unsupported, FOREVER)

DEFAULT_CAPACITY = 1 << 20
DEFAULT_SPIN_US = 50.0
OVERFLOW_MODES = ("block", "drop_oldest")
_PAGE = 4096
_DEFAULTS: dict[str, Any] = {"create": False, "subscribe": True, "capacity": DEFAULT_CAPACITY, "overflow": None,
                             "history": 0, "max_subscribers": 16, "mode": 0o600, "persist": False,
                             "spin": DEFAULT_SPIN_US, "max_message_size": None, "codec": None}  # __init__'s
_JOIN_TIMEOUT = 5.0  # seconds subscribing may wait for the publisher lock (a stopped publisher holds it)


class RingTopic(ArrayMethods, Channel):
    """One process's handle on a ``ring://`` topic (see the module docstring)."""

    scheme = "ring"
    recv_knobs = frozenset({"view"})
    duplex = True
    _t: Any = None
    name = ""
    path = ""

    def __init__(self, url: str, *, create: bool | str = False, subscribe: bool | str = True,
                 codec: str | Codec | None = None, capacity: int | str = DEFAULT_CAPACITY,
                 overflow: str | None = None, history: int | str = 0, max_subscribers: int | str = 16,
                 mode: int | str = 0o600, persist: bool | str = False, spin: float | str = DEFAULT_SPIN_US,
                 max_message_size: int | str | None = None) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "ring":
            raise InvalidArgument(f"{url}: a RingTopic URL is ring://NAME")
        if parsed.path not in ("", "/"):
            raise InvalidArgument(f"{parsed.url}: a ring URL is ring://NAME (no path)")
        given = {"create": create, "subscribe": subscribe, "capacity": capacity, "overflow": overflow,
                 "history": history, "max_subscribers": max_subscribers, "mode": mode, "persist": persist,
                 "spin": spin, "max_message_size": max_message_size, "codec": codec}
        unknown = set(parsed.query) - set(given)
        if unknown:
            raise InvalidArgument(f"{url}: unknown option(s) {sorted(unknown)}; a ring topic takes "
                                  f"{', '.join(given)}")
        # merge_query's rule (one name given both ways is an error), for the keywords not left at their default
        opts = merge_query(parsed, {k: v for k, v in given.items() if v != _DEFAULTS[k]})
        opts = {**_DEFAULTS, **opts}
        create, subscribe, capacity = opts["create"], opts["subscribe"], opts["capacity"]
        overflow, history, max_subscribers = opts["overflow"], opts["history"], opts["max_subscribers"]
        mode, persist, spin = opts["mode"], opts["persist"], opts["spin"]
        max_message_size, codec = opts["max_message_size"], opts["codec"]

        name = validate_name(parsed.netloc, what="ring name")
        url = f"ring://{name}"
        create = parse_create(create)
        subscribe = parse_bool(subscribe, what="subscribe")
        cap = validate_size(capacity, what="capacity", minimum=_PAGE, maximum=1 << 32)  # 32-bit record lengths
        cap = 1 << (cap - 1).bit_length()
        if overflow is not None and overflow not in OVERFLOW_MODES:
            raise InvalidArgument(f"{url}: overflow {overflow!r} must be one of {', '.join(OVERFLOW_MODES)}")
        hist = validate_size(history, what="history", minimum=0)
        subs = validate_size(max_subscribers, what="max_subscribers", minimum=1, maximum=_topic.MAX_SUBSCRIBERS)
        mode = validate_mode(mode)
        persist = parse_bool(persist, what="persist")
        if isinstance(spin, str):
            spin = parse_float(spin, what="spin")
        if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 <= spin <= 1e6:
            raise InvalidArgument(f"spin {spin!r} must be a number of microseconds in [0, 1e6]")
        limit = None if max_message_size is None else validate_size(max_message_size, what="max_message_size",
                                                                     minimum=1)
        path = shm_path(name)
        self.name, self.path, self.persist = name, path, persist
        if create:
            _check_room(url, cap)
        fd, created = open_path(path, url, create, mode)
        try:
            pid, start = _owners.self_owner()
            if created:
                os.fchmod(fd, mode)  # the umask filtered open()'s mode
                try:
                    _reserve(fd, url, _topic.header_size(subs) + cap)
                    self._t = _topic.Topic(fd, url, True, cap, subs, OVERFLOW_MODES.index(overflow or "block"),
                                           pid, start or 0, spin * 1e-6)
                except BaseException:
                    os.unlink(path)
                    raise
                self.owner = True
                if persist:
                    _owners.forget(url)
                else:
                    _owners.record(url, "ring", path=path, capacity=cap, identity=file_identity(os.fstat(fd), fd=fd))
            else:
                _check_attach(fd, url)
                self._t = _topic.Topic(fd, url, False, 0, 0, 0, pid, start or 0, spin * 1e-6)
                if overflow is not None and OVERFLOW_MODES[self._t.overflow] != overflow:
                    actual = OVERFLOW_MODES[self._t.overflow]
                    self._t.unmap()
                    self._t = None
                    raise InvalidArgument(f"open {url}: the topic was created with overflow={actual!r}, "
                                          f"not {overflow!r}")
        except OSError as e:
            if type(e).__module__.startswith("kipc") or isinstance(e, (BadObject, AlreadyExists)):
                self._abandon()
                raise
            self._abandon()
            raise from_oserror(e, url, "create" if created else "open") from e
        except BaseException:
            self._abandon()
            raise
        finally:
            os.close(fd)
        frag_max = int(self._t.frag_max)
        self.max_message_size = frag_max if limit is None else min(limit, frag_max)
        self._frag_max = frag_max
        if subscribe:
            try:
                self._t.subscribe(hist, Deadline(_JOIN_TIMEOUT))
            except BaseException:
                self._abandon()
                raise
        else:
            self.readable = False
        # the template's hooks are the C methods themselves (no Python frame on the hot path); the C
        # side gives one thread at a time the subscriber's cursor (a receive turn, by the deadline)
        self._send_blocking = self._t.send  # type: ignore[method-assign]  # (data, deadline, knobs)
        self._recv_blocking = self._t.recv  # type: ignore[method-assign]  # (deadline, knobs)
        self._send_until, self._recv_until = self._t.send, self._t.recv  # they take a float deadline too
        self._try_send = self._t.try_send  # type: ignore[method-assign]  # (data, knobs) -> bool
        self._try_recv = self._t.try_recv  # type: ignore[method-assign]  # (knobs) -> message | None
        self._wait = self._t.wait  # type: ignore[method-assign]  # (op, deadline) -> None
        self._ready = self._t.ready  # type: ignore[method-assign]  # (op) -> bool
        self._init_channel(url, codec=codec)

    def _abandon(self) -> None:
        """Undo a half-made handle: unmap, and remove the object if this call created it."""
        t, self._t = self._t, None
        if t is not None:
            t.unmap()
        if self.owner:
            self._owner = None
            self._unlink()

    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> RingTopic:
        return cls(parsed.url, **options)

    # -- hooks of the template ---------------------------------------------------------------------------
    def _prepare_recv(self, knobs: dict[str, Any]) -> None:
        super()._prepare_recv(knobs)
        if knobs.get("view") and self._t.overflow != 0:
            raise Unsupported(f"recv(view=True) on {self.url}: views are offered with overflow='block' only "
                              "(a drop_oldest publisher may overwrite the message under the view)")

    def _wait_fd(self, op: str) -> int | None:
        return None  # shared memory: async waits run _wait (a futex) in kipc's threads

    def _interrupt(self) -> None:
        t = self._t
        if t is not None:
            t.interrupt()
        super()._interrupt()

    def _quiesce(self) -> list[Any]:
        return []  # the C side counts calls and views in flight; the last one out unmaps

    def close(self) -> None:
        if not self._closed and self.owner and not self.persist:
            self._t.mark_closed()
        super().close()

    def _close(self) -> None:
        t, self._t = self._t, None
        if t is not None:
            t.unmap()
        super()._close()

    def _unlink(self) -> None:
        remove_path(self.path, f"ring://{self.name}")

    def _too_large(self, size: int, limit: int) -> MessageTooLarge:
        where = " (capacity/2 - 16)" if limit == self._frag_max else ""
        return MessageTooLarge(f"send on {self.url}: message of {size} bytes exceeds the limit of {limit} bytes"
                               f"{where}", size=size, limit=limit)

    # -- extras ------------------------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Messages this subscriber skipped because publishers overwrote them (drop_oldest)."""
        self._check_open("dropped")
        return int(self._t.dropped)

    @property
    def capacity(self) -> int:
        self._check_open("capacity")
        return int(self._t.capacity)

    @property
    def overflow(self) -> str:
        self._check_open("overflow")
        return OVERFLOW_MODES[self._t.overflow]

    def info(self) -> dict[str, Any]:
        """Header figures: capacity, subscribers, published count, positions, repairs, and per occupied
        slot ``slots``: [{pid, lag (messages published it has not received), dropped, alive}] (for
        ``kipc ls``; read without locks, unverified)."""
        self._check_open("info")
        d = dict(self._t.info())
        d["overflow"] = OVERFLOW_MODES[d["overflow"]]
        return d

    @contextlib.contextmanager
    def loan(self, n: int, *, timeout: float | None = None) -> Iterator[memoryview]:
        """Reserve ``n`` bytes in the buffer; the block's normal exit publishes them as one message.

        An exception publishes nothing. The publisher lock is held while the block runs (other
        publishers wait; finish it in the thread that took it, before this handle receives).
        Views made of the buffer must not be used after the block.
        """
        deadline = Deadline.of(timeout)
        self._check_open("loan")
        n = validate_size(n, what="loan size")
        limit = self.max_message_size if self.max_message_size is not None else self._frag_max
        if n > limit:
            raise self._too_large(n, limit)
        loan = self._t.loan(n, deadline)
        with lent(loan, loan.commit) as buf:
            yield buf

    # -- the array methods' hooks (kipc.transports._arrays) ---------------------------------------
    def _send_parts(self, parts: tuple[bytes, Any], size: int, deadline: Deadline) -> None:
        self._check_open("send")
        if self.max_message_size is not None and size > self.max_message_size:
            raise self._too_large(size, self.max_message_size)
        self._t.sendv(parts, deadline)

    def _recv_array_view(self, deadline: Deadline, copy: bool) -> memoryview:
        view = self._t.overflow == 0
        if not copy and not view:
            raise Unsupported(f"recv_array(copy=False) on {self.url}: views need overflow='block'")
        self._prepare_recv({})
        got = self._recv_blocking(deadline, {"view": True} if view else {})
        return got if type(got) is memoryview else memoryview(got)

    def _not_an_array(self, mv: memoryview, what: str) -> ProtocolError:
        return ProtocolError(f"recv_array on {self.url}: {what}; it was consumed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        role = "subscriber" if self.readable else "publisher"
        return f"<RingTopic {self.url} {role} {state}>"


def _check_attach(fd: int, url: str) -> None:
    check_shm_attach(fd, url, what="ring topic", magic=_topic.MAGIC, others={
        native("_ring").MAGIC: "this is a ring:// channel, not a topic (open it with kipc.open / RingChannel)"})
