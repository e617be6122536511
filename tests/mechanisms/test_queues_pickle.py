"""kipc.Queue's pickles of plain builtins, written and read in C (kipc._native._qpickle).

The writer must produce exactly the bytes multiprocessing's ForkingPickler writes (so any
receiver, kipc's or pickle's, reads them), and leave what it does not write to pickle; the
reader reads bytes from shared memory: on anything it does not take, or anything forged, its
answer (an object or an error) is pickle.loads'.
"""

from __future__ import annotations

import math
import pickle
import queue
import random
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest

import kipc
from kipc.queues import _qp

INTS = [0, 1, 255, 256, 65_535, 65_536, -1, -256, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**63, -(2**70)]
FLOATS = [0.0, -0.0, 1.5, -2.25e-300, 1e308, math.inf, -math.inf, math.nan]
STRS = ["", "a", "é", "日本語", "x" * 255, "x" * 256, "y" * 70_000, "\ud800", "a\udcff"]
BYTESES = [b"", b"\x00", b"z" * 255, b"z" * 256, b"w" * 70_000]
ATOMS: list[Any] = [None, True, False, *INTS, *FLOATS, *STRS, *BYTESES]


def forking(obj: Any) -> bytes:
    return bytes(ForkingPickler.dumps(obj, 5))


def same(a: Any, b: Any) -> bool:
    """Equal as pickles (NaN, -0.0 and types included)."""
    return pickle.dumps(a, 5) == pickle.dumps(b, 5)


def shapes(rnd: random.Random) -> Any:
    items = [rnd.choice(ATOMS) for _ in range(rnd.choice([0, 1, 2, 3, 4, 5, 31, 32, 33]))]
    if items and rnd.random() < 0.3:
        items.append(items[0])  # the same object twice: pickle's memo (BINGET)
    kind = rnd.randrange(4)
    if kind == 0:
        return tuple(items)
    if kind == 1:
        return items
    if kind == 2:
        keys = [k for k in items if k.__hash__ is not None]
        return dict(zip(keys, reversed(items), strict=False))
    return items[0] if items else None


def test_plain_pickles_written_in_c_are_forkingpicklers() -> None:
    edge: list[Any] = [*ATOMS, (), [], {}, (1,), (1, "a"), (1, "a", 2.0), (1, "a", 2.0, None), ["s"], ["s", "s"],
                       {"k": 1}, {"k": 1, "v": "x"}, ("s",) * 32, tuple(range(33)), {i: str(i) for i in range(32)},
                       ("x" * 30_000, "y" * 35_000), ("x" * 32_000, b"y" * 33_480)]
    rnd = random.Random(13)
    written = 0
    for obj in edge + [shapes(rnd) for _ in range(4000)]:
        d = _qp.plain_dumps(obj)
        if d is None:  # not plain (a nested container, > 32 items, a big bytes): the general path
            continue
        written += 1
        assert d == forking(obj), obj
        assert same(_qp.loads(d), obj), obj
    assert written > 3000


def test_writer_leaves_to_pickle_what_it_does_not_write() -> None:
    # plain, but not the writer's: a 64-bit int, a lone surrogate, more than one 64 KiB frame
    for obj in [(2**40,), ["\ud800"], ("x" * 70_000,), {"k": b"v" * 65_600}, 2**63, "\udcff", "y" * 70_000]:
        d = _qp.plain_dumps(obj)
        assert d == forking(obj), obj
        assert same(_qp.loads(d), obj)
    assert _qp.plain_dumps_many([(1, "a"), {"k": 2**40}]) == [forking((1, "a")), forking({"k": 2**40})]


# opcodes that import or call: never put into the forged data below (pickle.loads runs them)
DANGEROUS = set(b"ciRbo\x81\x92\x93PQ")


def outcome(loads: Any, data: bytes) -> tuple[str, bytes]:
    try:
        return "ok", pickle.dumps(loads(data), 5)
    except Exception:  # which error: pickle's own choice (the reader falls back to it)
        return "error", b""


def test_reader_answers_as_pickle_loads_on_forged_data() -> None:
    objs: list[Any] = [(1, "xy", 2.0), {"k": 1, "v": "xx"}, ["zz", "zz", None, True], (0, 1, 2, 3, 4), (),
                       {"k": [1]}, "xyz", 256, -5, [b"\x00\x01"], {"a": "z"}]
    tried = 0
    for obj in objs:
        good = forking(obj)
        assert same(_qp.loads(good), obj)
        assert not DANGEROUS & set(good), obj  # so no forgery below can make pickle import or call
        forged = [good[:i] for i in range(len(good))]  # every truncation
        forged += [good + b"."]  # trailing data
        for i in range(2, len(good)):
            for v in {0, 1, 2, 3, 0x7F, 0xFF, good[i] ^ 1, *b"NKMJG\x8cCXBh\x94()t]}aesu\x85\x86\x87\x88.\x95"}:
                if v not in DANGEROUS:
                    forged.append(good[:i] + bytes([v]) + good[i + 1:])
        for f in forged:
            mine, ref = outcome(_qp.loads, f), outcome(pickle.loads, f)
            assert mine[0] == ref[0] and (mine[0] == "error" or mine == ref), (obj, f, mine, ref)
            tried += 1
    assert tried > 5000


def test_reader_takes_at_most_one_mark_level_and_its_stack_limits() -> None:
    # nested MARKs, a list in a tuple, a self-containing list: read by pickle.loads, the same objects
    nested = b"\x80\x05((K\x01tt."
    assert _qp.loads(nested) == pickle.loads(nested) == ((1,),)
    self_ref = b"\x80\x05]\x94h\x00a."
    got = _qp.loads(self_ref)
    assert got[0] is got
    many = b"\x80\x05(" + b"K\x01" * 200 + b"t."  # more items than the reader's stack: pickle's
    assert _qp.loads(many) == (1,) * 200
    memo = b"\x80\x05(" + b"N\x94" * 100 + b"t."  # more memo entries than the reader keeps
    assert _qp.loads(memo) == (None,) * 100


def test_plain_objects_round_trip_through_a_queue() -> None:
    rnd = random.Random(5)
    objs = [shapes(rnd) for _ in range(300)] + [(1, "a", 2.0), {"k": 1, "v": "x"}]
    q: kipc.Queue[Any] = kipc.Queue()
    try:
        for o in objs[:150]:
            q.put(o)
        q.put_many(objs[150:])
        got = [q.get(timeout=5) for _ in range(100)]
        while len(got) < len(objs):
            got += q.get_many(64, timeout=5)
        assert len(got) == len(objs) and all(same(a, b) for a, b in zip(got, objs, strict=True))
    finally:
        q.close()


@pytest.mark.parametrize("obj", [(1, "a", 2.0), {"k": 1, "v": "x"}, ["s", 1]])
def test_plain_pickle_read_by_the_stdlib_queue_format(obj: Any) -> None:
    # what the writer puts in the ring is what multiprocessing's own receiver would read
    assert ForkingPickler.loads(_qp.plain_dumps(obj)) == obj


def test_a_dropped_queue_is_freed_at_once() -> None:
    # get()'s C part (_qpickle.getter) refers to the ring, not to the queue: no cycle, so the
    # creator's ring is removed when its last reference goes, without waiting for a collection
    import gc
    import os

    gc.disable()
    try:
        q: kipc.Queue[Any] = kipc.Queue()
        q.put((1, "a"))
        assert q.get(timeout=5) == (1, "a")
        path = "/dev/shm/kipc.ring." + q._ch.name
        assert os.path.exists(path)
        del q
        assert not os.path.exists(path)
    finally:
        gc.enable()


def test_get_hands_what_is_not_a_plain_pickle_to_the_general_path() -> None:
    import numpy as np

    q: kipc.Queue[Any] = kipc.Queue()
    raw: kipc.Queue[Any] = kipc.Queue(dumps=bytes, loads=bytes)  # its own loads=: every message is its
    try:
        a = np.arange(100_000, dtype=np.float64)  # out of band (first byte 0x42)
        q.put(a)
        q.put(b"\x42" * 10)  # a pickle that happens to hold 0x42 bytes: still a pickle (first byte 0x80)
        assert np.array_equal(q.get(timeout=5), a) and q.get(timeout=5) == b"\x42" * 10
        raw.put(b"\x80\x05N.")  # a pickle's bytes, but this queue's loads is bytes: not unpickled
        raw.put(b"")
        assert raw.get(timeout=5) == b"\x80\x05N." and raw.get(timeout=5) == b""
        q._ring.send(b"")  # a forged empty message: pickle's error, not an IndexError of ours
        with pytest.raises(EOFError):
            q.get(timeout=5)
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.01)
    finally:
        q.close()
        raw.close()
