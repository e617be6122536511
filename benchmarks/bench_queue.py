"""kipc.Queue against multiprocessing.Queue (and faster-fifo when importable), between two processes.

Patterns (the producer is a forked child, the consumer the parent; each number is the best
of ``--repeat`` runs, default 3):

* ``small``: N small objects one way (64 B bytes, a small tuple, a small dict), msg/s.
* ``rtt``: a 64 B object there and back, median µs.
* ``batch``: ``put_many``/``get_many`` with batches of 64 small tuples, objects/s (mp.Queue has
  no batch calls: its row is one put/get per object).
* ``numpy``: a 100 MB float64 array, end to end (put in the child .. array in the parent), GB/s.
* ``1GiB``: one 1 GiB bytes object, seconds.

    .venv/bin/python benchmarks/bench_queue.py [--quick] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import kipc

try:
    import faster_fifo  # type: ignore[import-not-found]
    import faster_fifo_reduction  # type: ignore[import-not-found]  # noqa: F401  (pickles queues for mp)
except ImportError:  # pragma: no cover
    faster_fifo = None

MB = 10**6
GiB = 1 << 30
SMALL: dict[str, Any] = {"bytes64": b"x" * 64, "tuple": (1, "a", 2.0), "dict": {"k": 1, "v": "x"}}
CTX = mp.get_context("fork")


def make(mech: str, big: bool = False) -> Any:
    if mech == "kipc.Queue":
        return kipc.Queue()
    if mech == "mp.Queue":
        return CTX.Queue()
    return faster_fifo.Queue(max_size_bytes=(200 * MB) if big else 16 * MB)


def mechanisms() -> list[str]:
    return ["kipc.Queue", "mp.Queue"] + (["faster-fifo"] if faster_fifo is not None else [])


def _run(mech: str, producer: Callable[[Any, Any], None], consumer: Callable[[Any, Any], float],
         big: bool = False) -> float:
    q, back = make(mech, big), make(mech)
    p = CTX.Process(target=producer, args=(q, back))
    p.start()
    try:
        return consumer(q, back)
    finally:
        p.join(120)
        if p.is_alive():
            p.kill()


def _get_batch(q: Any, n: int) -> list[Any]:
    if isinstance(q, kipc.Queue):
        return q.get_many(n)
    return list(q.get_many(max_messages_to_get=n))


def small(mech: str, obj: Any, n: int) -> float:
    def producer(q: Any, back: Any) -> None:
        back.get()
        for _ in range(n):
            q.put(obj)

    def consumer(q: Any, back: Any) -> float:
        back.put(1)
        t = time.perf_counter()
        for _ in range(n):
            q.get()
        return n / (time.perf_counter() - t)

    return _run(mech, producer, consumer)


def rtt(mech: str, n: int) -> float:
    obj = b"x" * 64

    def producer(q: Any, back: Any) -> None:  # the echo
        for _ in range(n + 100):
            back.put(q.get())

    def consumer(q: Any, back: Any) -> float:
        times = []
        for i in range(n + 100):
            t = time.perf_counter()
            q.put(obj)
            back.get()
            if i >= 100:
                times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6

    return _run(mech, producer, consumer)


def batch(mech: str, n: int, size: int = 64) -> float:
    obj = (1, "a", 2.0)
    rounds = n // size

    def producer(q: Any, back: Any) -> None:
        back.get()
        items = [obj] * size
        for _ in range(rounds):
            if mech == "mp.Queue":
                for o in items:
                    q.put(o)
            else:
                q.put_many(items)

    def consumer(q: Any, back: Any) -> float:
        back.put(1)
        t = time.perf_counter()
        got = 0
        while got < rounds * size:
            if mech == "mp.Queue":
                q.get()
                got += 1
            else:
                got += len(_get_batch(q, size))
        return got / (time.perf_counter() - t)

    return _run(mech, producer, consumer)


def numpy_gbs(mech: str, n: int, nbytes: int = 100 * MB) -> float:
    def producer(q: Any, back: Any) -> None:
        a = np.ones(nbytes // 8)
        for _ in range(n):
            back.get()
            q.put(a)

    def consumer(q: Any, back: Any) -> float:
        best = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            back.put(time.perf_counter())
            a = q.get(timeout=120)
            dt = time.perf_counter() - t
            assert a.nbytes == nbytes
            del a
            best = min(best, dt)
        return nbytes / best / 1e9

    return _run(mech, producer, consumer, big=True)


def one_gib(mech: str) -> float:
    def producer(q: Any, back: Any) -> None:
        obj = b"\x01" * GiB
        back.get()
        q.put(obj)

    def consumer(q: Any, back: Any) -> float:
        back.put(1)
        t = time.perf_counter()
        obj = q.get(timeout=300)
        assert len(obj) == GiB
        return time.perf_counter() - t

    if mech == "faster-fifo":
        return float("nan")  # its queue would need a >1 GiB buffer
    return _run(mech, producer, consumer, big=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = 20_000 if args.quick else 100_000
    rows: list[dict[str, Any]] = []

    def best(metric: str, fn: Callable[[], float], lower: bool = False) -> float:
        vals = [fn() for _ in range(args.repeat)]
        return min(vals) if lower else max(vals)

    for mech in mechanisms():
        row: dict[str, Any] = {"mechanism": mech}
        for label, obj in SMALL.items():
            row[f"{label} msg/s"] = best(label, lambda obj=obj, m=mech: small(m, obj, n))
        row["rtt µs"] = best("rtt", lambda m=mech: rtt(m, n // 20), lower=True)
        row["batch64 obj/s"] = best("batch", lambda m=mech: batch(m, n * (4 if m != "mp.Queue" else 1)))
        row["numpy 100MB GB/s"] = numpy_gbs(mech, 3 if args.quick else 5)
        row["1GiB s"] = one_gib(mech) if not args.quick else float("nan")
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    keys = list(rows[0])
    print(" | ".join(f"{k:>16}" for k in keys))
    for r in rows:
        print(" | ".join(f"{r[k]:>16,.1f}" if isinstance(r[k], float) else f"{r[k]:>16}" for k in keys))
    mpq = next(r for r in rows if r["mechanism"] == "mp.Queue")
    kq = next(r for r in rows if r["mechanism"] == "kipc.Queue")
    print("kipc.Queue / mp.Queue:", ", ".join(
        f"{k} {kq[k] / mpq[k]:.1f}x" for k in keys[1:] if isinstance(kq[k], float) and mpq[k] == mpq[k]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
