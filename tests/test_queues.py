"""kipc.Queue / JoinableQueue / SimpleQueue against multiprocessing's own Queue expectations.

Mirrors the Queue cases of CPython's ``_test_multiprocessing.py`` (put/get,
block/timeout, qsize/empty/full, fork, task_done/join, closed queue) under
fork, spawn and forkserver, plus what kipc promises beyond the stdlib:
pickling errors at put(), a producer killed mid-put wedges nothing, and no
segment is left in /dev/shm.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kipc
from kipc import _owners, admin, testing

METHODS = ["fork", "spawn", "forkserver"]


def shm_names(tag: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if tag in n]


@pytest.fixture
def Q() -> Iterator[Any]:
    """kipc.Queue-like factories named inside this test's namespace, removed at the end."""
    made: list[Any] = []

    def make(cls: Any = kipc.Queue, *args: Any, **kw: Any) -> Any:
        q = cls(*args, name=testing.unique_name("q"), **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        inner = q._q if isinstance(q, kipc.SimpleQueue) else q
        if inner._ch.owner:
            inner._ch.unlink()


# -- children (module level: spawn and forkserver import them) --------------------------

def _putter(q: Any, items: list[Any]) -> None:
    for i in items:
        q.put(i)


def _doubler(inq: Any, outq: Any) -> None:
    for item in iter(inq.get, None):
        outq.put(item * 2)


def _task_worker(q: Any, results: Any) -> None:
    for item in iter(q.get, None):
        results.put(item)
        q.task_done()
    q.task_done()


def _put_many_and_exit(q: Any, n: int, size: int) -> None:
    for i in range(n):
        q.put((i, b"x" * size))  # far more than the ring holds: the feeder must flush at exit


# -- the stdlib's expectations ------------------------------------------------------------

def test_put_get_block_timeout_qsize(Q: Any) -> None:
    q = Q(kipc.Queue, 6)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put(2, True)
    q.put(3, True, None)
    q.put(4, False)
    q.put(5, False, None)
    q.put_nowait(6)
    assert q.qsize() == 6 and q.full() and not q.empty()
    with pytest.raises(queue.Full):
        q.put(7, False)
    with pytest.raises(queue.Full):
        q.put_nowait(7)
    for t in (0.05, 0.2):
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(7, True, t)
        assert time.monotonic() - t0 >= t * 0.9
    assert [q.get(), q.get(True), q.get(True, None), q.get(False), q.get(False, None), q.get_nowait()] == [1, 2, 3, 4,
                                                                                                          5, 6]
    assert q.empty() and q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(False)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(True, 0.2)
    assert 0.18 <= time.monotonic() - t0 < 5


def test_objects_round_trip_by_pickle(Q: Any) -> None:
    q = Q()
    objs: list[Any] = [None, 0, "text", b"\x00" * 10, {"a": [1, 2.5]}, (1, "x"), set(range(5)), 2**200,
                       ValueError("e"), b"y" * (3 << 20)]  # the last one is 3x the ring: fragments
    t = threading.Thread(target=lambda: [q.put(o) for o in objs])
    t.start()
    got = [q.get(timeout=20) for _ in objs]
    t.join(20)
    assert [repr(g) for g in got] == [repr(o) for o in objs]


def test_unpicklable_raises_at_put_and_queue_still_works(Q: Any) -> None:
    q = Q()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(lambda: 1)
    with pytest.raises(TypeError):
        q.put(threading.Lock())
    q.put("fine")
    assert q.get(timeout=5) == "fine" and q.empty()


def test_unbounded_put_never_blocks_and_keeps_order(Q: Any) -> None:
    q = Q(capacity=64 << 10)
    n = 5000  # ~5 MB of items, ring of 64 KiB: the feeder buffers, as multiprocessing's does
    t0 = time.monotonic()
    for i in range(n):
        q.put((i, b"z" * 1000))
    assert time.monotonic() - t0 < 30
    assert q.qsize() == n
    for i in range(n):
        assert q.get(timeout=10)[0] == i
    q.close()
    q.join_thread()


@pytest.mark.parametrize("method", METHODS)
def test_queue_between_processes(method: str, Q: Any) -> None:
    ctx = mp.get_context(method)
    inq, outq = Q(kipc.Queue, ctx=ctx), Q(kipc.Queue, ctx=ctx)
    p = ctx.Process(target=_doubler, args=(inq, outq))
    p.start()
    for i in range(100):
        inq.put(i)
    inq.put(None)
    assert [outq.get(timeout=30) for _ in range(100)] == [2 * i for i in range(100)]
    p.join(30)
    assert p.exitcode == 0
    assert outq.empty()


@pytest.mark.parametrize("method", METHODS)
def test_child_puts_more_than_capacity_then_exits(method: str, Q: Any) -> None:
    ctx = mp.get_context(method)
    q = Q(kipc.Queue, capacity=64 << 10)
    p = ctx.Process(target=_put_many_and_exit, args=(q, 300, 2000))
    p.start()
    # as with multiprocessing, the child's exit flushes its buffer, so consume before join()
    assert [q.get(timeout=30)[0] for _ in range(300)] == list(range(300))
    p.join(30)
    assert p.exitcode == 0


def test_fork_os_level(Q: Any) -> None:
    q = Q()
    pid = os.fork()
    if pid == 0:
        try:
            for i in range(10):
                q.put(("child", i))
        finally:
            os._exit(0)
    got = [q.get(timeout=10) for _ in range(10)]
    assert os.waitpid(pid, 0)[1] == 0
    assert got == [("child", i) for i in range(10)]


@pytest.mark.parametrize("method", METHODS)
def test_task_done_and_join(method: str, Q: Any) -> None:
    ctx = mp.get_context(method)
    q, results = Q(kipc.JoinableQueue), Q(kipc.Queue)
    workers = [ctx.Process(target=_task_worker, args=(q, results)) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(30):
        q.put(i)
    assert q.join(timeout=60) is True  # blocks until every item was task_done()'d
    assert sorted(results.get(timeout=10) for _ in range(30)) == list(range(30))
    for _ in workers:
        q.put(None)
    q.join()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0


def test_task_done_too_many_times(Q: Any) -> None:
    q = Q(kipc.JoinableQueue)
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    q.put(1)
    assert q.join(timeout=0.05) is False
    q.get()
    q.task_done()
    assert q.join(timeout=1) is True


def test_closed_queue(Q: Any) -> None:
    for q in (Q(kipc.Queue), Q(kipc.JoinableQueue)):
        q.close()
        with pytest.raises(ValueError, match="is closed"):
            q.put("foo")
        with pytest.raises(ValueError, match="is closed"):
            q.get()
        q.join_thread()
        assert q.empty()
    q = Q(kipc.Queue)
    with pytest.raises(AssertionError):
        q.join_thread()  # not closed yet, as in the stdlib
    q.cancel_join_thread()


def test_simple_queue(Q: Any) -> None:
    q = Q(kipc.SimpleQueue)
    assert q.empty()
    q.put({"x": 1})
    assert not q.empty()
    assert q.get() == {"x": 1}
    q.close()
    with pytest.raises(OSError):
        q.get()


@pytest.mark.parametrize("method", ["spawn"])
def test_simple_queue_between_processes(method: str, Q: Any) -> None:
    ctx = mp.get_context(method)
    q = Q(kipc.SimpleQueue)
    p = ctx.Process(target=_putter, args=(q, [1, 2, 3]))
    p.start()
    assert [q.get() for _ in range(3)] == [1, 2, 3]
    p.join(30)


def test_maxsize_blocks_until_a_get(Q: Any) -> None:
    q = Q(kipc.Queue, 2)
    q.put(1)
    q.put(2)
    threading.Timer(0.2, q.get).start()
    t0 = time.monotonic()
    q.put(3, timeout=10)
    assert time.monotonic() - t0 >= 0.15
    assert [q.get(timeout=5), q.get(timeout=5)] == [2, 3]


# -- beyond the stdlib: crashes and cleanup ------------------------------------------------

_KILLED_PUTTER = r"""
import pickle, sys, kipc
q = pickle.loads(bytes.fromhex(sys.argv[1]))
print("READY", flush=True)
i = 0
while True:
    q.put((i, b"p" * (i % 7 * 30000)))
    i += 1
"""


def test_producer_killed_mid_put_does_not_wedge(Q: Any) -> None:
    q = Q(kipc.Queue, capacity=64 << 10)
    for round_ in range(5):
        with testing.spawn(_KILLED_PUTTER, pickle.dumps(q).hex()) as child:
            seen = -1
            for _ in range(20 + round_ * 7):
                i, blob = q.get(timeout=20)
                assert i == seen + 1 and blob == b"p" * (i % 7 * 30000)
                seen = i
            child.kill()
        while True:  # whatever it committed is whole and in order
            try:
                i, blob = q.get(timeout=0.1)
            except queue.Empty:
                break
            assert i == seen + 1 and blob == b"p" * (i % 7 * 30000)
            seen = i
    q.put("alive")
    assert q.get(timeout=5) == "alive"


_CREATOR = r"""
import kipc, os, sys
q = kipc.Queue()
q.put("x")
print("READY", q._ch.name, flush=True)
sys.stdin.readline()
"""


def test_auto_named_queue_removed_when_collected_and_at_exit() -> None:
    q = kipc.Queue()
    name = q._ch.name
    assert shm_names(name)
    del q
    gc.collect()
    assert not shm_names(name)  # never pickled: removed as soon as the creator drops it
    # a pickled copy that never attached keeps it until the creator's exit
    code = ("import kipc, pickle\nq = kipc.Queue()\npickle.dumps(q)\nname = q._ch.name\ndel q\n"
            "import gc, os; gc.collect()\nkept = int(os.path.exists('/dev/shm/kipc.ring.' + name))\n"
            "print('READY', kept, name, flush=True)\n")
    with testing.Child(code) as child:
        line = child.expect("READY", timeout=30).split()
        child.check(timeout=30)
    assert line[1] == "1" and not shm_names(line[2])


def test_creator_sigkilled_leaves_record_for_gc() -> None:
    with testing.spawn(_CREATOR, stdin=True) as child:
        name = child.lines_seen[-1].split()[1]
        assert shm_names(name)
        child.kill(signal.SIGKILL)
    url = f"ring://{name}"
    rec = _owners.lookup(url)
    assert rec is not None and not rec.alive
    removed = admin.gc().removed
    assert any(i.url == url for i in removed)
    assert not shm_names(name) and _owners.lookup(url) is None


def test_attach_counter_lets_creator_remove_early(Q: Any) -> None:
    q = Q()
    blob = pickle.dumps(q)
    assert q._ring.add_pending(0) == 1
    other = pickle.loads(blob)
    assert q._ring.add_pending(0) == 0
    other.put("via copy")
    assert q.get(timeout=5) == "via copy"
