"""kipc.Queue as a complete drop-in (issue 13): objects of any size, multiprocessing's
reducers, a small /dev/shm, clean exits under every start method, parity details,
batches, a serializer hook and numpy out of band.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import multiprocessing.queues
import os
import pickle
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest

import kipc

METHODS = ["fork", "spawn", "forkserver"]
GiB = 1 << 30


def rings_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"kipc.ring.mpq-{pid}-"))


def need_ram(nbytes: int) -> None:
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if avail < nbytes:
        pytest.skip(f"needs {nbytes >> 20} MiB of free RAM, {avail >> 20} MiB available")


# -- children ---------------------------------------------------------------------------------

def _echo_len(q: Any, out: Any) -> None:
    obj = q.get()
    out.put((len(obj), obj[:4], obj[-4:]))


def _put_plain(q: Any, out: Any) -> None:
    q.put((7, "x"))  # a queue its parent closed is open again here, as the stdlib's
    out.put(q.get(timeout=5))


def _np_summary(q: Any, out: Any) -> None:
    import numpy as np

    a = q.get()
    a[0] = 9  # writable, as the stdlib's
    out.put((a.shape, str(a.dtype), int(a[1]), int(a[-1]), bool(np.all(a[1:100] == 1))))


def _put_big_and_exit(q: Any, size: int) -> None:
    q.put(b"\x01" * size)  # the feeder still holds most of it when the child's main returns


def _use_conn(q: Any) -> None:
    conn = q.get()
    conn.send("through the queue")
    conn.close()


def _use_sock(q: Any) -> None:
    s = q.get()
    s.sendall(b"sock ok")
    s.close()


def _create_and_exit(out: Any, how: str, ready: Any) -> None:
    q = kipc.Queue()
    q.put("x" * 100)
    out.put(q._ch.name)
    if how == "wait":
        ready.set()
        time.sleep(60)  # SIGTERM ends this
    elif how == "raise":
        raise SystemExit(3)


def _put_in_child(q: Any) -> None:
    q.put("from a child of a closer")


def _put_arrays(q: Any, n: int, count: int) -> None:
    import numpy as np

    for i in range(count):
        q.put(np.full(n, float(i)))
    q.close()
    q.join_thread()


# -- 1. any size ---------------------------------------------------------------------------------

def test_one_gib_bytes_between_processes() -> None:
    need_ram(4 * GiB)
    ctx = mp.get_context("fork")
    q, out = kipc.Queue(), kipc.Queue()
    p = ctx.Process(target=_echo_len, args=(q, out))
    p.start()
    obj = b"head" + b"\x00" * (GiB - 8) + b"tail"
    q.put(obj)  # never blocks: the feeder streams it through the 256 KiB ring
    del obj
    assert out.get(timeout=120) == (GiB, b"head", b"tail")
    p.join(30)
    assert p.exitcode == 0


def test_one_gib_numpy_between_processes() -> None:
    np = pytest.importorskip("numpy")
    need_ram(4 * GiB)
    ctx = mp.get_context("spawn")
    q, out = kipc.Queue(), kipc.Queue()
    p = ctx.Process(target=_np_summary, args=(q, out))
    p.start()
    a = np.ones(GiB // 8, dtype=np.int64)
    a[-1] = 7
    q.put(a)
    del a
    assert out.get(timeout=120) == ((GiB // 8,), "int64", 1, 7, True)
    p.join(30)
    assert p.exitcode == 0


def test_timed_get_keeps_the_partial_and_resumes() -> None:
    q = kipc.Queue(capacity=64 << 10)
    size = 64 << 20
    done = threading.Event()

    def produce() -> None:
        for chunk in range(2):
            q.put(bytes([chunk + 1]) * size)
        done.set()

    t = threading.Thread(target=produce)
    got: list[bytes] = []
    timeouts = 0
    t.start()
    deadline = time.monotonic() + 60
    while len(got) < 2 and time.monotonic() < deadline:
        try:
            got.append(q.get(timeout=0.001))  # far shorter than a 64 MiB transfer: resumed each time
        except queue.Empty:
            timeouts += 1
    t.join(30)
    assert [len(g) for g in got] == [size, size]
    assert got[0] == b"\x01" * size and got[1] == b"\x02" * size
    assert timeouts > 0  # the deadline was kept mid-message, and nothing was lost for it


@pytest.mark.parametrize("method", METHODS)
def test_producer_exit_waits_for_its_big_object(method: str) -> None:
    ctx = mp.get_context(method)
    q = kipc.Queue()
    size = 300 << 20
    p = ctx.Process(target=_put_big_and_exit, args=(q, size))
    p.start()
    obj = q.get(timeout=120)
    assert len(obj) == size and obj[:1] == b"\x01" and obj[-1:] == b"\x01"
    p.join(60)
    assert p.exitcode == 0


# -- 2. ForkingPickler -----------------------------------------------------------------------------

class Registered:
    def __init__(self, v: int) -> None:
        self.v = v


def _rebuild_registered(v: int) -> Registered:
    r = Registered(v)
    r.v = v * 100
    return r


ForkingPickler.register(Registered, lambda r: (_rebuild_registered, (r.v,)))


@pytest.mark.parametrize("obj", [b"x", "s", 1, 1.5, None, True, (1, "a"), {"k": [1, 2]}, list(range(50)),
                                 Registered(3), {"nested": (Registered(1), b"y" * 100)}, b"big" * 500_000,
                                 {"k": 1, "v": "x"}, {"r": Registered(4)}, {1: (Registered(6),)},
                                 (b"z", [Registered(7)])])
def test_bytes_are_forkingpicklers(obj: Any) -> None:
    from kipc.queues import _encode

    data = _encode(obj)
    assert (b"".join(data) if isinstance(data, list) else data) == bytes(ForkingPickler.dumps(obj, 5))


def test_registered_reducer_applies() -> None:
    q = kipc.Queue()
    q.put(Registered(2))
    assert q.get(timeout=5).v == 200
    q.put({"r": Registered(3)})  # inside a dict: put()'s plain-pickle shortcut must not take it
    assert q.get(timeout=5)["r"].v == 300
    q.put_many([(1, "a"), (Registered(4),), {"k": Registered(5)}])  # a batch of mixed kinds
    got = q.get_many(3, timeout=5)
    assert got[0] == (1, "a") and got[1][0].v == 400 and got[2]["k"].v == 500


@pytest.mark.parametrize("batch", [[b"x" * 64] * 64, [(1, "a", 2.0)] * 64, [1, "s", None, 2.5, True],
                                   [[1, 2], (3,)], [{"k": 1}], [b"a", 1], [(Registered(1),)], [b"big" * 500_000]])
def test_batch_bytes_are_forkingpicklers(batch: list[Any]) -> None:
    from kipc.queues import _encode, _plain_dumps_many

    datas = _plain_dumps_many(batch)
    if datas is None:  # the one-pass case does not apply: put_many encodes one by one
        datas = [_encode(o) for o in batch]
    assert [b"".join(d) if isinstance(d, list) else d for d in datas] == [bytes(ForkingPickler.dumps(o, 5))
                                                                        for o in batch]
    if any(isinstance(o, tuple) and isinstance(o[0], Registered) for o in batch):
        assert _plain_dumps_many(batch) is None  # a reducer may apply: never the one-pass case


@pytest.mark.parametrize("method", METHODS)
def test_connection_travels(method: str) -> None:
    ctx = mp.get_context(method)
    q = kipc.Queue()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_use_conn, args=(q,))
    p.start()
    q.put(w)  # multiprocessing's reducer: the child gets a working duplicate of the fd
    assert r.poll(30)
    assert r.recv() == "through the queue"
    p.join(30)
    assert p.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_socket_travels(method: str) -> None:
    ctx = mp.get_context(method)
    q = kipc.Queue()
    a, b = socket.socketpair()
    p = ctx.Process(target=_use_sock, args=(q,))
    p.start()
    q.put(b)
    a.settimeout(30)
    assert a.recv(100) == b"sock ok"
    p.join(30)
    assert p.exitcode == 0
    a.close()
    b.close()


def test_pickling_error_still_at_put() -> None:
    q = kipc.Queue()
    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
        q.put(lambda: 1)
    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
        q.put_many([1, threading.Lock()])
    assert q.empty()  # put_many serializes everything before it sends anything


# -- 3. a small /dev/shm ---------------------------------------------------------------------------

SMALL_SHM_SCRIPT = textwrap.dedent("""
    import os, multiprocessing as mp, kipc
    from kipc.errors import LimitExceeded

    def worker(qs):
        for q in qs:
            for i in range(20):
                q.put(bytes([i]) * 200_000)          # fragments through the small ring
            q.put(b"end")

    if __name__ == "__main__":
        qs = [kipc.Queue() for _ in range(100)]
        p = mp.get_context("fork").Process(target=worker, args=(qs,))
        p.start()
        for q in qs:
            got = list(iter(q.get, b"end"))
            assert [len(g) for g in got] == [200_000] * 20 and got[7][:1] == b"\\x07", len(got)
        p.join(60)
        assert p.exitcode == 0
        try:
            kipc.Queue(capacity=64 << 20)
        except LimitExceeded as e:
            assert "/dev/shm" in str(e), e
            print("refused:", e)
        else:
            raise AssertionError("a ring bigger than /dev/shm was created")
        from kipc.transports import ring  # the reservation itself, on more than what is free
        fd = os.open("/dev/shm/kipc.ring.toobig", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            st = os.statvfs("/dev/shm")
            ring._reserve(fd, "ring://toobig", st.f_bavail * st.f_frsize + (1 << 20))
        except LimitExceeded as e:
            assert "/dev/shm" in str(e) and "free" in str(e), e
            print("refused:", e)
        else:
            raise AssertionError("posix_fallocate beyond the free space succeeded")
        finally:
            os.close(fd)
            os.unlink("/dev/shm/kipc.ring.toobig")
        print("OK", len(os.listdir("/dev/shm")))
""")


def test_hundred_queues_in_a_64mib_dev_shm(tmp_path: Any) -> None:
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and unshare -m (a private mount namespace)")
    script = tmp_path / "small_shm.py"
    script.write_text(SMALL_SHM_SCRIPT)
    cmd = f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} {script}"
    r = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout and r.stdout.count("refused:") == 2, r.stdout


def test_ring_space_reserved_at_creation() -> None:
    q = kipc.Queue()
    st = os.stat(q._ch.path)
    assert st.st_blocks * 512 >= st.st_size  # allocated now, not at first touch


# -- 4. clean under every start method ----------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("how", ["return", "raise", "terminate"])
def test_child_creator_leaves_nothing(method: str, how: str) -> None:
    ctx = mp.get_context(method)
    out = kipc.Queue()
    ready = ctx.Event()
    p = ctx.Process(target=_create_and_exit, args=(out, "wait" if how == "terminate" else how, ready))
    p.start()
    name = out.get(timeout=30)
    path = f"/dev/shm/kipc.ring.{name}"
    if how == "terminate":
        assert ready.wait(30)
        assert os.path.exists(path)
        p.terminate()  # SIGTERM, as multiprocessing sends it
    p.join(30)
    assert p.exitcode == {"return": 0, "raise": 3, "terminate": -15}[how]
    assert not os.path.exists(path), f"{how} under {method} left {path}"
    assert rings_of(p.pid) == []


def test_parent_exit_paths_leave_nothing(tmp_path: Any) -> None:
    code = textwrap.dedent("""
        import os, sys, signal, kipc
        q = kipc.Queue(); q.put(1)
        print(q._ch.path, flush=True)
        if sys.argv[1] == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif sys.argv[1] == "exit":
            sys.exit(0)
    """)
    for how in ("normal", "exit", "term"):
        r = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60)
        path = r.stdout.strip()
        assert path.startswith("/dev/shm/kipc.ring."), r.stderr
        assert r.returncode == (-15 if how == "term" else 0), r.stderr
        assert not os.path.exists(path), how


# -- 5. parity details ---------------------------------------------------------------------------

def test_ctx_validated_like_the_stdlib() -> None:
    with pytest.raises(ValueError, match="cannot find context for 'bogus'"):
        kipc.Queue(ctx="bogus")
    with pytest.raises(ValueError):
        kipc.SimpleQueue(ctx="bogus")
    with pytest.raises(TypeError):
        kipc.JoinableQueue(ctx=42)
    for ctx in (mp.get_context("spawn"), "fork", None):
        kipc.Queue(ctx=ctx).put(1)


def test_join_returns_none() -> None:
    q = kipc.JoinableQueue()
    q.put(1)
    q.get()
    q.task_done()
    assert q.join() is None
    assert q.join(timeout=0) is True  # the kipc extension keeps its answer


def test_generic_aliases() -> None:
    for cls in (kipc.Queue, kipc.JoinableQueue, kipc.SimpleQueue):
        alias = cls[int]
        assert alias.__origin__ is cls and alias.__args__ == (int,)
        assert repr(alias).endswith("[int]")
    assert mp.queues.SimpleQueue[int].__args__ == (int,)  # the stdlib's, for comparison


@pytest.mark.parametrize("method", METHODS)
def test_closed_queue_passes_to_a_child(method: str) -> None:
    ctx = mp.get_context(method)
    q = kipc.Queue()
    reader = kipc.Queue()
    q2 = q
    q.close()
    p = ctx.Process(target=_put_in_child, args=(q2,))
    p.start()  # the stdlib allows it; the child's copy is open
    p.join(30)
    assert p.exitcode == 0
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    assert reader.empty()


def test_queue_inside_a_queue() -> None:
    outer, inner = kipc.Queue(), kipc.Queue()
    outer.put(inner)
    got = outer.get(timeout=5)
    got.put("via the copy")
    assert inner.get(timeout=5) == "via the copy"


# -- 6. batches and a serializer hook ----------------------------------------------------------------

def test_put_many_get_many() -> None:
    q = kipc.Queue()
    q.put_many(range(100))
    assert q.qsize() == 100
    assert q.get_many(64) == list(range(64))
    assert q.get_many(64) == list(range(64, 100))
    with pytest.raises(queue.Empty):
        q.get_many(10, block=False)
    t = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.1)
    assert time.monotonic() - t >= 0.09
    with pytest.raises(ValueError):
        q.get_many(0)


def test_put_many_beyond_the_ring_keeps_order() -> None:
    q = kipc.Queue(capacity=4096)
    q.put_many(b"%05d" % i * 50 for i in range(2000))
    got = []
    while len(got) < 2000:
        got.extend(q.get_many(64, timeout=10))
    assert got == [b"%05d" % i * 50 for i in range(2000)]


def _consume_n(q: Any, out: Any, n: int) -> None:
    got = []
    while len(got) < n:
        got.extend(q.get_many(64, timeout=30))
    out.put(got == _mixed_stream(), True, 60)


def _mixed_stream() -> list[Any]:
    objs: list[Any] = []
    for r in range(40):
        objs.extend((r, i, "s" * (i % 7)) for i in range(150))  # put_many's batches
        objs.append(b"%d" % r * 30_000)  # bigger than half the ring: fragments, in order between them
        objs.append({"single": r})
    return objs


def test_batches_singles_and_fragments_through_a_full_ring_keep_order() -> None:
    # put_many into a full ring: the rest is buffered in one go, and the putting thread and the
    # feeder move runs of it with send_many while a consumer in another process reads
    q = kipc.Queue(capacity=16 << 10)
    out = kipc.Queue()
    objs = _mixed_stream()
    p = mp.get_context("fork").Process(target=_consume_n, args=(q, out, len(objs)))
    p.start()
    at = 0
    for _ in range(40):
        q.put_many(objs[at:at + 150])
        q.put(objs[at + 150])
        q.put(objs[at + 151])
        at += 152
    assert out.get(timeout=60) is True  # every object once, in order
    p.join(30)
    assert p.exitcode == 0


def test_put_many_bounded_and_joinable() -> None:
    q = kipc.Queue(maxsize=3)
    q.put_many([1, 2, 3])
    with pytest.raises(queue.Full):
        q.put_many([4], timeout=0.05)
    assert q.get_many(5) == [1, 2, 3]
    jq = kipc.JoinableQueue()
    jq.put_many("abc")
    assert jq.get_many(3) == ["a", "b", "c"]
    for _ in range(3):
        jq.task_done()
    assert jq.join() is None


def test_serializer_hook() -> None:
    q = kipc.Queue(dumps=lambda o: json.dumps(o).encode(), loads=lambda b: json.loads(bytes(b)))
    q.put({"a": [1, 2]})
    assert q.get(timeout=5) == {"a": [1, 2]}
    raw = kipc.Queue(dumps=bytes, loads=bytes)
    raw.put_many([b"one", b"two"])
    assert raw.get_many(2) == [b"one", b"two"]
    with pytest.raises(kipc.InvalidArgument):
        kipc.Queue(dumps=bytes)


def _json_dumps(o: Any) -> bytes:
    return json.dumps(o).encode()


def _json_loads(b: Any) -> Any:
    return json.loads(bytes(b))


def _json_child(q: Any, out: Any) -> None:
    out.put(q.get())


@pytest.mark.parametrize("method", ["spawn"])
def test_serializer_hook_travels_with_the_queue(method: str) -> None:
    ctx = mp.get_context(method)
    q = kipc.Queue(dumps=_json_dumps, loads=_json_loads)
    out = kipc.Queue(dumps=_json_dumps, loads=_json_loads)
    p = ctx.Process(target=_json_child, args=(q, out))
    p.start()
    q.put([1, "two"])
    assert out.get(timeout=30) == [1, "two"]
    p.join(30)


# -- 7. numpy out of band ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [10, 20_000, 1_000_000, 20_000_000])
def test_numpy_round_trip(n: int) -> None:
    np = pytest.importorskip("numpy")
    q = kipc.Queue()
    a = np.arange(n, dtype=np.float64).reshape(-1, 2) if n % 2 == 0 else np.arange(n)
    q.put({"a": a, "b": a[::2], "tag": "x"})  # a non-contiguous view travels in band
    got = q.get(timeout=30)
    assert got["tag"] == "x"
    assert got["a"].dtype == a.dtype and got["a"].shape == a.shape and np.array_equal(got["a"], a)
    assert np.array_equal(got["b"], a[::2])
    assert got["a"].flags.writeable
    got["a"][0] = -1
    assert a.flat[0] == 0  # a copy, not the sender's memory
    if a.nbytes > 1 << 20:  # reassembled from fragments: the array lies over that one block (no 2nd copy)
        base = got["a"]
        while getattr(base, "base", None) is not None:
            base = base.base
        # ... the whole message's block (header, pickle, both buffers), not a copy of this buffer
        assert isinstance(base, memoryview) and base.nbytes == a.nbytes and len(base.obj) > a.nbytes


def test_pickle_buffer_out_of_band() -> None:
    from kipc.queues import _encode

    big = bytearray(b"z" * (1 << 20))
    parts = _encode(pickle.PickleBuffer(big))
    assert isinstance(parts, list) and any(memoryview(p).obj is big for p in parts[1:])  # not copied
    q = kipc.Queue()
    q.put(pickle.PickleBuffer(big))
    got = q.get(timeout=10)
    assert bytes(got) == bytes(big)


def test_many_arrays_in_one_object() -> None:
    np = pytest.importorskip("numpy")
    q = kipc.Queue()
    arrays = [np.full(20_000, i, dtype=np.int32) for i in range(40)]  # more than sendv's parts
    q.put(arrays)
    got = q.get(timeout=30)
    assert all(np.array_equal(g, a) for g, a in zip(got, arrays, strict=True))


def test_creator_copy_removed_when_collected() -> None:
    q = kipc.Queue()
    path = q._ch.path
    del q
    gc.collect()
    assert not os.path.exists(path)


def test_threads_putting_through_a_full_ring_keep_their_order() -> None:
    q = kipc.Queue(capacity=4096)
    n = 3000

    def put(tag: int) -> None:
        for i in range(n):
            q.put((tag, i, b"p" * (i % 300)))

    threads = [threading.Thread(target=put, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for _ in range(3 * n):
        tag, i, pad = q.get(timeout=30)
        assert len(pad) == i % 300
        seen[tag].append(i)
    for t in threads:
        t.join()
    assert all(v == list(range(n)) for v in seen.values())  # per producer thread: FIFO, none lost or doubled
    assert q.empty()


def test_big_and_small_objects_interleaved_in_order() -> None:
    np = pytest.importorskip("numpy")
    q = kipc.Queue(capacity=16 << 10)
    objs: list[Any] = []
    for i in range(30):
        objs.append(i)
        objs.append(bytes([i]) * (200_000 + i) if i % 3 else np.full(30_000 + i, i, dtype=np.int64))
    for o in objs:
        q.put(o)  # the ring holds none of the big ones whole: fragments, buffer, feeder and drains
    for want in objs:
        got = q.get(timeout=30)
        if isinstance(want, np.ndarray):
            assert np.array_equal(got, want)
        else:
            assert got == want


def _block_of(a: Any) -> Any:
    base = a
    while getattr(base, "base", None) is not None:
        base = base.base
    return base.obj  # the bytearray a big message was reassembled into


def test_reassembly_blocks_are_reused_only_when_free() -> None:
    np = pytest.importorskip("numpy")
    from kipc import queues

    queues._qp.pool_clear()  # this process's blocks: none from earlier tests
    q = kipc.Queue(capacity="256K")
    n = (4 << 20) // 8  # 4 MiB arrays: fragmented, pooled
    q.put(np.full(n, 1.0))
    a1 = q.get(timeout=30)
    first = id(_block_of(a1))
    q.put(np.full(n, 2.0))
    a2 = q.get(timeout=30)  # a1 still held: its block must not be reused
    assert id(_block_of(a2)) != first and not np.shares_memory(a1, a2)
    assert (a1 == 1.0).all() and (a2 == 2.0).all() and a1.flags.writeable
    del a1
    q.put(np.full(n, 3.0))
    a3 = q.get(timeout=30)  # a1's block is free again: reused (already faulted in)
    assert id(_block_of(a3)) == first and (a3 == 3.0).all() and (a2 == 2.0).all()
    q.put(b"b" * (3 << 20))  # a big bytes object: unpickled out of a block (a copy), block freed
    got = q.get(timeout=30)
    assert type(got) is bytes and got == b"b" * (3 << 20)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_big_arrays_from_another_process_stay_intact_while_held(method: str) -> None:
    np = pytest.importorskip("numpy")
    q = kipc.Queue()  # 256 KiB ring: every 8 MB array arrives in fragments, into a pooled block
    n, count = (8 << 20) // 8, 6
    p = mp.get_context(method).Process(target=_put_arrays, args=(q, n, count))
    p.start()
    held = [q.get(timeout=60) for _ in range(3)]  # held at once: three different blocks
    for i, a in enumerate(held):
        assert a.shape == (n,) and a.flags.writeable and (a == float(i)).all()
    assert not any(np.shares_memory(x, y) for i, x in enumerate(held) for y in held[i + 1:])
    held[0][:] = -1.0  # ours to write
    del held[1:]  # two blocks free again: the next arrays may reuse them, never held[0]'s
    later = [q.get(timeout=60) for _ in range(count - 3)]
    assert (held[0] == -1.0).all()
    for i, a in enumerate(later, start=3):
        assert (a == float(i)).all() and not np.shares_memory(a, held[0])
    p.join(30)
    assert p.exitcode == 0


def test_plain_send_pickles_sends_or_hands_back() -> None:
    from kipc.queues import _plain_send

    sent: list[bytes] = []
    assert _plain_send(lambda d: sent.append(d) or True, (1, "a")) is True
    assert sent == [bytes(ForkingPickler.dumps((1, "a"), 5))]
    back = _plain_send(lambda d: False, {"k": 2.5})  # no room: the pickle comes back to be buffered
    assert back == bytes(ForkingPickler.dumps({"k": 2.5}, 5))
    assert _plain_send(sent.append, [Registered(1)]) is None and len(sent) == 1  # not plain: not called
    with pytest.raises(ZeroDivisionError):
        _plain_send(lambda d: 1 / 0, b"x")  # the send's error propagates


def test_closed_queue_refuses_put_and_reopens_in_a_child() -> None:
    q: kipc.Queue[Any] = kipc.Queue()
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put((1, "a"))
    with pytest.raises(ValueError, match="is closed"):
        q.put_many([(1, "a")])
    with pytest.raises(ValueError, match="is closed"):
        q.get_nowait()
    out: kipc.Queue[Any] = kipc.Queue()
    p = mp.get_context("fork").Process(target=_put_plain, args=(q, out))
    p.start()
    assert out.get(timeout=30) == (7, "x")
    p.join(30)
    assert p.exitcode == 0


def test_block_pool_reuses_free_blocks_within_their_allocation() -> None:
    from kipc.queues import _qp

    _qp.pool_clear()
    small = _qp.alloc(1000)
    assert type(small) is bytearray and len(small) == 1000 and _qp.alloc(1000) is not small  # not pooled
    a = _qp.alloc(4 << 20)
    a_id = id(a)
    view = memoryview(a)
    del a
    b = _qp.alloc(4 << 20)
    b_id = id(b)
    assert b_id != a_id  # a view of the first block is alive: never handed out again
    view.release()
    del view, b  # both free now (the pool keeps them)
    c = _qp.alloc(3 << 20)  # smaller, within a free block's allocation: that block, resized
    d = _qp.alloc(3 << 20)
    assert len(c) == len(d) == 3 << 20 and (id(c), id(d)) == (a_id, b_id)
    big = _qp.alloc((128 << 20) + 1)  # bigger than the pool keeps
    assert len(big) == (128 << 20) + 1
    del big, c, d
    _qp.pool_clear()
    with pytest.raises(ValueError):
        _qp.alloc(-1)


def test_plain_bytes_pickles_written_in_c_match_forkingpicklers() -> None:
    from kipc.queues import _qp

    # every size class of the C writer: short / long, framed / unframed, and their edges
    for n in [*range(0, 300), 65_530, 65_535, 65_536, 65_537, 100_000, (1 << 20) - 1]:
        b = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert _qp.plain_dumps(b) == bytes(ForkingPickler.dumps(b, 5)), n
        assert pickle.loads(_qp.plain_dumps(b)) == b
    assert _qp.plain_dumps(b"x" * (1 << 20)) is None  # big bytes travel as parts, not plain


def test_loads_cuts_out_bytes_pickles_and_trusts_no_length() -> None:
    from kipc.queues import _qp

    for n in (0, 1, 255, 256, 65_535, 65_536, 200_000):
        d = bytes(ForkingPickler.dumps(b"\x09" * n, 5))
        assert _qp.loads(d) == b"\x09" * n
        for cut in (1, 2, 3):  # truncated: pickle's own error, never bytes of the wrong length
            with pytest.raises((pickle.UnpicklingError, EOFError, ValueError)):
                _qp.loads(d[:-cut])
    good = bytes(ForkingPickler.dumps(b"abc", 5))
    forged = [good[:3] + b"\x09" + good[4:],  # frame length 9 for 7 bytes
              good[:12] + b"\xff" + good[13:],  # payload length 255 for 3
              good[:11] + b"B" + good[12:]]  # BINBYTES with a short length field
    for f in forged:
        with pytest.raises((pickle.UnpicklingError, EOFError, ValueError)):
            _qp.loads(f)
    for obj in [(1, "a"), {"k": b"v"}, None, 3.5, "str"]:  # the other shapes: test_queues_pickle.py
        assert _qp.loads(bytes(ForkingPickler.dumps(obj, 5))) == obj
