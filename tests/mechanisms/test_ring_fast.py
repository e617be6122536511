"""ring:// send/recv on the instance fast path (``Channel._fast_calls``).

While the hot path holds (default codec, open, methods not overridden), ``ch.send`` and
``ch.recv`` are C callables that do ``send(bytes)``/``recv()`` with ``timeout=None`` or a plain
positive number themselves and hand every other call to ``Channel.send``/``Channel.recv``
unchanged. What these tests hold them to:

* installed and removed with the hot path: codec changes, ``close()``, an overriding subclass;
* every call they do not take behaves exactly as the class's method (result or error, message
  included); a timed-out call names the channel and its timeout as the template does;
* ``max_message_size`` assigned later is honoured;
* no reference cycle: a dropped handle is freed (and closed) at once, and a fast call kept past
  its channel raises ChannelClosed;
* threads and fork: close from another thread wakes a fast recv; a forked child's fast calls
  work on its own copy of the handle.
"""

from __future__ import annotations

import gc
import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kipc
from kipc import testing
from kipc._base import Channel
from kipc.codecs import get_codec
from kipc.transports.ring import RingChannel

KiB = 1 << 10


@pytest.fixture
def ring() -> Iterator[Callable[..., RingChannel]]:
    made: list[RingChannel] = []

    def make(**kw: Any) -> RingChannel:
        ch = RingChannel(testing.unique_name("fast"), create=True, **kw)
        made.append(ch)
        return ch

    yield make
    for ch in made:
        ch.close()


def _fast(ch: RingChannel) -> tuple[bool, bool]:
    d = vars(ch)
    return "send" in d, "recv" in d


def test_installed_while_the_hot_path_holds(ring: Callable[..., RingChannel]) -> None:
    ch = ring()
    assert _fast(ch) == (True, True)
    ch.codec = get_codec("json")
    assert _fast(ch) == (False, False)
    ch.send([1, "a"])
    assert ch.recv() == [1, "a"]
    ch.codec = get_codec(None)
    assert _fast(ch) == (True, True)
    assert ring(codec="msgpack").__dict__.get("send") is None
    ch.close()
    assert _fast(ch) == (False, False)
    with pytest.raises(kipc.ChannelClosed, match="closed by this process"):
        ch.send(b"x")


def test_introspects_as_the_bound_method(ring: Callable[..., RingChannel]) -> None:
    ch = ring()
    for name, method in (("send", Channel.send), ("recv", Channel.recv)):
        fast, bound = getattr(ch, name), method.__get__(ch)
        assert type(fast) is not type(bound)
        assert inspect.signature(fast) == inspect.signature(bound)
        assert fast.__doc__ == method.__doc__ and fast.__name__ == name and fast.__self__ is ch
        assert fast.__wrapped__ == bound


def test_an_overriding_subclass_keeps_its_methods(ring: Callable[..., RingChannel]) -> None:
    seen: list[bytes] = []

    class Logged(RingChannel):
        def send(self, obj: Any, *, timeout: float | None = None, **knobs: Any) -> None:
            seen.append(obj)
            super().send(obj, timeout=timeout, **knobs)

    with Logged(testing.unique_name("fastsub"), create=True) as ch:
        assert _fast(ch) == (False, True)
        ch.send(b"abc")
        assert seen == [b"abc"] and ch.recv() == b"abc"


@pytest.mark.parametrize("call", [
    "send(bytearray(b'ab'))", "send(memoryview(b'ab'))", "send('text')", "send(b'a', timeout=0)",
    "send(b'a', timeout=-1)", "send(b'a', timeout=True)", "send(b'a', timeout=float('nan'))",
    "send(b'a', timeout=10**400)", "send(b'a', timeout='1')", "send(b'a', 1)", "send()",
    "send(b'a', colour=1)", "send(b'a', priority=3)", "send(b'a', timeout=None, priority=3)",
    "recv(timeout=0)", "recv(timeout=-1)", "recv(timeout=True)", "recv(1)",
    "recv(colour=1)", "recv(timeout=0.02, priority=1)",
])
def test_calls_it_does_not_take_behave_as_the_class_method(ring: Callable[..., RingChannel], call: str) -> None:
    ch = ring(capacity=4 * KiB)

    def outcome(target: Any) -> tuple[str, str]:
        try:
            got = eval(call, {"ch": target, "float": float})
        except Exception as e:
            return type(e).__name__, str(e)
        return "ok", repr(bytes(got) if isinstance(got, memoryview) else got)

    fast = outcome(ch)  # the instance's callable
    drained = [ch.recv(timeout=0.2) for _ in range(ch.qsize())]  # what the call sent, if it sent
    slow = outcome(_Bound(ch))  # the class's methods on the same handle
    drained_slow = [ch.recv(timeout=0.2) for _ in range(ch.qsize())]
    assert fast == slow
    assert drained == drained_slow
    assert fast[0] != "ok" or call.startswith("send")


class _Bound:
    """The class's send/recv bound to a channel, bypassing the instance's fast calls."""

    def __init__(self, ch: RingChannel) -> None:
        self.send = Channel.send.__get__(ch)
        self.recv = Channel.recv.__get__(ch)


def test_view_knob_and_other_buffers_take_the_class_path(ring: Callable[..., RingChannel]) -> None:
    ch = ring()
    ch.send(bytearray(b"ba"))
    ch.send(memoryview(b"mv"))
    v = ch.recv(view=True)
    assert type(v) is memoryview and bytes(v) == b"ba"
    v.release()
    assert ch.recv(timeout=1) == b"mv"


def test_a_timed_out_call_names_the_channel_and_its_timeout(ring: Callable[..., RingChannel]) -> None:
    ch = ring(capacity=4 * KiB)
    for timeout, shown in ((0.02, "0.02"), (1, "1")):
        if timeout == 1:  # an int timeout: fill the ring so send times out fast
            while ch._try_send(b"y" * 512, {}):
                pass
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout, match=rf"^send on {ch.url} timed out after {shown} s$"):
                ch.send(b"y" * 512, timeout=timeout)
            assert 0.9 < time.monotonic() - t0 < 5
        else:
            with pytest.raises(kipc.Timeout, match=rf"^recv on {ch.url} timed out after {shown} s$"):
                ch.recv(timeout=timeout)
    assert ch.qsize() > 0  # nothing was lost or added by the timed-out send


def test_max_message_size_assigned_later_is_honoured(ring: Callable[..., RingChannel]) -> None:
    ch = ring()
    ch.send(b"abcd")
    ch.max_message_size = 3
    with pytest.raises(kipc.MessageTooLarge, match="4 bytes exceeds the limit of 3 bytes"):
        ch.send(b"wxyz")
    ch.send(b"abc", timeout=1.0)
    ch.max_message_size = None
    ch.send(b"wxyz", timeout=1.0)
    assert [ch.recv(timeout=1.0) for _ in range(3)] == [b"abcd", b"abc", b"wxyz"]


def test_no_cycle_a_dropped_handle_is_freed_at_once(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    gc.disable()
    try:
        rx = RingChannel(tx.name)
        assert _fast(rx) == (True, True)
        kept = rx.send
        ref = weakref.ref(rx)
        del rx
        assert ref() is None  # freed by its reference count, no collector needed
        for call in (lambda: kept(b"x"), lambda: kept(b"x", colour=1)):  # fast, and for the class's method
            with pytest.raises(kipc.ChannelClosed, match="closed by this process"):
                call()  # its finalizer closed the handle
        assert tx.qsize() == 0
    finally:
        gc.enable()


def test_close_from_another_thread_wakes_a_fast_recv(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    rx = RingChannel(tx.name)
    out: list[BaseException] = []
    started = threading.Event()

    def blocked() -> None:
        started.set()
        try:
            rx.recv()
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    started.wait(5)
    time.sleep(0.05)
    t0 = time.monotonic()
    rx.close()
    t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 1.0
    assert len(out) == 1 and isinstance(out[0], kipc.ChannelClosed)
    assert "closed by this process" in str(out[0])


def test_threads_on_one_handle_each_message_once(ring: Callable[..., RingChannel]) -> None:
    ch = ring(capacity=16 * KiB)
    n, senders = 5000, 3
    got: list[bytes] = []
    lock = threading.Lock()

    def send(k: int) -> None:
        for i in range(n):
            ch.send(b"%d:%d" % (k, i), timeout=10.0)

    def recv() -> None:
        while True:
            m = ch.recv(timeout=10.0)
            if m == b"end":
                return
            with lock:
                got.append(m)

    rs = [threading.Thread(target=recv) for _ in range(2)]
    ss = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
    for t in rs + ss:
        t.start()
    for t in ss:
        t.join(60)
    for _ in rs:
        ch.send(b"end")
    for t in rs:
        t.join(60)
    assert sorted(got) == sorted(b"%d:%d" % (k, i) for k in range(senders) for i in range(n))


def test_a_forked_child_uses_its_own_copy(ring: Callable[..., RingChannel]) -> None:
    up, down = ring(), ring()
    assert _fast(up) == (True, True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            up.send(b"from child", timeout=5.0)
            code = 0 if down.recv(timeout=5.0) == b"from parent" else 2
        finally:
            os._exit(code)
    assert up.recv(timeout=5.0) == b"from child"
    down.send(b"from parent")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
