"""CPython's own queue tests, ported to kipc.Queue / JoinableQueue / SimpleQueue.

Mirrors ``_TestQueue``, the JoinableQueue case of it and ``TestSimpleQueue`` from
CPython 3.11's ``Lib/test/_test_multiprocessing.py`` (same steps, same
assertions, shorter timeouts), each under fork, spawn and forkserver. Where
kipc differs on purpose the port says so: a pickling error raises at ``put()``
(the stdlib's feeder thread prints it and drops the object), so the two feeder
error tests check that instead.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as pyqueue
import sys
import time
from typing import Any

import pytest

import kipc

METHODS = ["fork", "spawn", "forkserver"]
DELTA = 0.1
TIMEOUT1, TIMEOUT2, TIMEOUT3 = 0.2, 0.1, 0.3


class TimingWrapper:
    def __init__(self, func: Any) -> None:
        self.func = func
        self.elapsed: float | None = None

    def __call__(self, *args: Any, **kwds: Any) -> Any:
        t = time.monotonic()
        try:
            return self.func(*args, **kwds)
        finally:
            self.elapsed = time.monotonic() - t


def almost(elapsed: float | None, expected: float) -> None:
    assert elapsed is not None
    assert expected - 0.05 <= elapsed <= expected + 0.5, (elapsed, expected)


def queue_empty(q: Any) -> bool:
    return bool(q.empty())


def queue_full(q: Any, maxsize: int) -> bool:
    return bool(q.full())


def close_queue(q: Any) -> None:
    q.close()
    q.join_thread()


@pytest.fixture(params=METHODS)
def ctx(request: Any) -> Any:
    return mp.get_context(request.param)


# -- children (module level: spawn and forkserver import them) --------------------------

def _test_put(queue: Any, child_can_start: Any, parent_can_continue: Any) -> None:
    child_can_start.wait()
    for _ in range(6):
        queue.get()
    parent_can_continue.set()


def _test_get(queue: Any, child_can_start: Any, parent_can_continue: Any) -> None:
    child_can_start.wait()
    queue.put(2)
    queue.put(3)
    queue.put(4)
    queue.put(5)
    parent_can_continue.set()


def _test_fork(queue: Any) -> None:
    for i in range(10, 20):
        queue.put(i)
    # the items may only be buffered: the process cannot shut down until they are in the ring


def _test_task_done(q: Any) -> None:
    for _ in iter(q.get, None):
        time.sleep(DELTA)
        q.task_done()


def _test_empty(queue: Any, child_can_start: Any, parent_can_continue: Any) -> None:
    child_can_start.wait()
    try:  # issue 30301, could fail under spawn and forkserver
        queue.put(queue.empty())
        queue.put(queue.empty())
    finally:
        parent_can_continue.set()


# -- _TestQueue ---------------------------------------------------------------------------

def test_put(ctx: Any) -> None:
    MAXSIZE = 6
    queue = kipc.Queue(maxsize=MAXSIZE, ctx=ctx)
    child_can_start, parent_can_continue = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_test_put, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()

    assert queue_empty(queue) is True
    assert queue_full(queue, MAXSIZE) is False

    queue.put(1)
    queue.put(2, True)
    queue.put(3, True, None)
    queue.put(4, False)
    queue.put(5, False, None)
    queue.put_nowait(6)
    time.sleep(DELTA)

    assert queue_empty(queue) is False
    assert queue_full(queue, MAXSIZE) is True

    put = TimingWrapper(queue.put)
    put_nowait = TimingWrapper(queue.put_nowait)
    with pytest.raises(pyqueue.Full):
        put(7, False)
    almost(put.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put(7, False, None)
    almost(put.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put_nowait(7)
    almost(put_nowait.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put(7, True, TIMEOUT1)
    almost(put.elapsed, TIMEOUT1)
    with pytest.raises(pyqueue.Full):
        put(7, False, TIMEOUT2)
    almost(put.elapsed, 0)
    with pytest.raises(pyqueue.Full):
        put(7, True, timeout=TIMEOUT3)
    almost(put.elapsed, TIMEOUT3)

    child_can_start.set()
    assert parent_can_continue.wait(30)

    assert queue_empty(queue) is True
    assert queue_full(queue, MAXSIZE) is False

    proc.join(30)
    assert proc.exitcode == 0
    close_queue(queue)


def test_get(ctx: Any) -> None:
    queue = kipc.Queue(ctx=ctx)
    child_can_start, parent_can_continue = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_test_get, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()

    assert queue_empty(queue) is True
    child_can_start.set()
    assert parent_can_continue.wait(30)
    time.sleep(DELTA)
    assert queue_empty(queue) is False

    assert queue.get(True, None) == 2
    assert queue.get(True) == 3
    assert queue.get(timeout=1) == 4
    assert queue.get_nowait() == 5
    assert queue_empty(queue) is True

    get = TimingWrapper(queue.get)
    get_nowait = TimingWrapper(queue.get_nowait)
    with pytest.raises(pyqueue.Empty):
        get(False)
    almost(get.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get(False, None)
    almost(get.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get_nowait()
    almost(get_nowait.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get(True, TIMEOUT1)
    almost(get.elapsed, TIMEOUT1)
    with pytest.raises(pyqueue.Empty):
        get(False, TIMEOUT2)
    almost(get.elapsed, 0)
    with pytest.raises(pyqueue.Empty):
        get(timeout=TIMEOUT3)
    almost(get.elapsed, TIMEOUT3)

    proc.join(30)
    assert proc.exitcode == 0
    close_queue(queue)


def test_fork(ctx: Any) -> None:
    # a child must start its own feeder even though the parent has one (bpo: old Queues did not)
    queue = kipc.Queue(ctx=ctx, capacity=4096)  # a tiny ring: the puts below go through feeders
    for i in range(10):
        queue.put(i)
    time.sleep(DELTA)
    p = ctx.Process(target=_test_fork, args=(queue,))
    p.daemon = True
    p.start()
    for i in range(20):
        assert queue.get(timeout=30) == i
    with pytest.raises(pyqueue.Empty):
        queue.get(False)
    p.join(30)
    assert p.exitcode == 0
    close_queue(queue)


def test_qsize() -> None:
    q = kipc.Queue()
    assert q.qsize() == 0
    q.put(1)
    assert q.qsize() == 1
    q.put(5)
    assert q.qsize() == 2
    q.get()
    assert q.qsize() == 1
    q.get()
    assert q.qsize() == 0
    close_queue(q)


def test_task_done(ctx: Any) -> None:
    queue = kipc.JoinableQueue(ctx=ctx)
    workers = [ctx.Process(target=_test_task_done, args=(queue,)) for _ in range(4)]
    for p in workers:
        p.daemon = True
        p.start()
    for i in range(10):
        queue.put(i)
    assert queue.join() is None
    for _ in workers:
        queue.put(None)
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    close_queue(queue)


def test_no_import_lock_contention(tmp_path: Any, monkeypatch: Any) -> None:
    module_name = "imported_by_an_imported_module_kipc"
    (tmp_path / f"{module_name}.py").write_text(
        "import kipc\n"
        "q = kipc.Queue()\n"
        "q.put('knock knock')\n"
        "q.get(timeout=3)\n"
        "q.close()\n"
        "del q\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        __import__(module_name)  # issue 22853: a get() during an import must not deadlock
    except pyqueue.Empty:
        pytest.fail("Probable regression on import lock contention; see Issue #22853")
    finally:
        sys.modules.pop(module_name, None)


def test_timeout() -> None:
    q = kipc.Queue()
    start = time.monotonic()
    with pytest.raises(pyqueue.Empty):
        q.get(True, 0.200)
    assert time.monotonic() - start >= 0.100
    close_queue(q)


class NotSerializable:
    def __reduce__(self) -> Any:
        raise AttributeError


def test_queue_feeder_donot_stop_onexc() -> None:
    # bpo-30414 / bpo-33078, kipc's way: the error raises at put(), the queue keeps working and
    # its size stays right (the stdlib prints it from its feeder thread and drops the object)
    q = kipc.Queue()
    with pytest.raises(AttributeError):
        q.put(NotSerializable())
    q.put(True)
    assert q.get(timeout=10) is True
    close_queue(q)

    q = kipc.Queue(maxsize=1)
    with pytest.raises(AttributeError):
        q.put(NotSerializable())
    q.put(True)
    assert q.qsize() == 1
    assert q.get(timeout=10) is True
    assert q.empty()
    close_queue(q)


def test_queue_feeder_on_queue_feeder_error() -> None:
    # bpo-30006's _on_queue_feeder_error hook exists because the stdlib pickles in its feeder;
    # kipc pickles in put(): the caller gets the exception, and the object's __reduce__ ran
    class Mock:
        def __init__(self) -> None:
            self.reduce_was_called = False

        def __reduce__(self) -> Any:
            self.reduce_was_called = True
            raise AttributeError

    obj = Mock()
    q = kipc.Queue(ctx=mp.get_context())
    with pytest.raises(AttributeError):
        q.put(obj)
    q.put(True)
    assert q.get(timeout=10) is True
    assert obj.reduce_was_called


def test_closed_queue_put_get_exceptions() -> None:
    for q in kipc.Queue(), kipc.JoinableQueue():
        q.close()
        with pytest.raises(ValueError, match="is closed"):
            q.put("foo")
        with pytest.raises(ValueError, match="is closed"):
            q.get()


# -- TestSimpleQueue ----------------------------------------------------------------------

def test_simple_queue_empty(ctx: Any) -> None:
    queue = kipc.SimpleQueue(ctx=ctx)
    child_can_start, parent_can_continue = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_test_empty, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()
    assert queue.empty()
    child_can_start.set()
    assert parent_can_continue.wait(30)
    assert not queue.empty()
    assert queue.get() is True
    assert queue.get() is False
    assert queue.empty()
    proc.join(30)
    assert proc.exitcode == 0


def test_simple_queue_close() -> None:
    queue = kipc.SimpleQueue()
    queue.close()
    queue.close()  # closing a queue twice should not fail


def test_simple_queue_closed() -> None:
    # the stdlib checks its private _reader/_writer; kipc's closed SimpleQueue refuses use the same way
    queue = kipc.SimpleQueue()
    queue.close()
    with pytest.raises(OSError, match="closed"):
        queue.get()
    with pytest.raises(OSError, match="closed"):
        queue.put(1)
