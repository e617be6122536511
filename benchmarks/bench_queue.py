"""kipc.Queue against multiprocessing.Queue (and faster-fifo when importable), between two processes.

Patterns (the producer is a forked child, the consumer the parent; each number is the best
of ``--repeat`` runs, default 3):

* ``small``: N small objects one way (64 B bytes, a small tuple, a small dict), msg/s.
* ``rtt``: a 64 B object there and back, median µs.
* ``batch``: ``put_many``/``get_many`` with batches of 64 small tuples, objects/s (mp.Queue has
  no batch calls: its row is one put/get per object).
* ``numpy``: a 100 MB float64 array, end to end (put in the child .. array in the parent), GB/s.
* ``numpy-4M``: the same through ``kipc.Queue(capacity="4M")`` (a bigger ring: fewer hand-offs
  between the two processes; the mp.Queue row is the stdlib queue as is).
* ``1GiB``: one 1 GiB bytes object, seconds.
* ``percall-bytes64|tuple|dict``: in one process, ns per put + get (1,000 puts, then 1,000 gets,
  best of 50): the per-call cost, stable to a few % where two-process rates swing 3x.
* ``percall-batch``: the same per object for ``put_many`` + ``get_many`` of 64 small tuples
  (mp.Queue: put + get).

    .venv/bin/python benchmarks/bench_queue.py [--quick] [--repeat N] [--only PATTERN...] [--json]
                                               [--baseline SRC]

Each repeat runs every mechanism once (interleaved), so a load swing hits them alike.
``--baseline SRC`` adds a row "kipc.Queue@baseline": the same patterns, in the same repeats, run
in a child process importing kipc from SRC (another checkout's ``src`` with its extensions built
in place: ``python setup.py build_ext --inplace`` there), to compare a change before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import kipc

try:
    import faster_fifo
    import faster_fifo_reduction  # noqa: F401  (pickles queues for mp)
except ImportError:  # pragma: no cover
    faster_fifo = None

MB = 10**6
GiB = 1 << 30
SMALL: dict[str, Any] = {"bytes64": b"x" * 64, "tuple": (1, "a", 2.0), "dict": {"k": 1, "v": "x"}}
CTX = mp.get_context("fork")


def make(mech: str, big: bool = False, capacity: str | None = None) -> Any:
    if mech == "kipc.Queue":
        return kipc.Queue(capacity=capacity) if capacity else kipc.Queue()
    if mech == "mp.Queue":
        return CTX.Queue()
    return faster_fifo.Queue(max_size_bytes=(200 * MB) if big else 16 * MB)


def mechanisms() -> list[str]:
    return ["kipc.Queue", "mp.Queue"] + (["faster-fifo"] if faster_fifo is not None else [])


def _run(mech: str, producer: Callable[[Any, Any], None], consumer: Callable[[Any, Any], float],
         big: bool = False, capacity: str | None = None) -> float:
    q, back = make(mech, big, capacity), make(mech)
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


def numpy_gbs(mech: str, n: int, nbytes: int = 100 * MB, capacity: str | None = None) -> float:
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

    return _run(mech, producer, consumer, big=True, capacity=capacity)


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


def percall_batch(mech: str, size: int = 64, rounds: int = 16) -> float:
    """In one process: ns per object of put_many + get_many of ``size`` small tuples."""
    q = make(mech, big=True)
    items = [(1, "a", 2.0)] * size
    best = float("inf")
    for _ in range(50):
        t = time.perf_counter()
        for _ in range(rounds):
            if mech == "mp.Queue":
                for o in items:
                    q.put(o)
                for _ in items:
                    q.get()
            else:
                q.put_many(items)
                got = 0
                while got < size:
                    got += len(_get_batch(q, size - got))
        best = min(best, time.perf_counter() - t)
    return best / (rounds * size) * 1e9


def percall(mech: str, obj: Any, n: int = 1000) -> float:
    """In one process: ns per put + get of ``obj`` (n puts, then n gets; the stable figure on a
    shared machine, where the two-process rates swing with the scheduler; n fits the ring)."""
    q = make(mech, big=True)
    best = float("inf")
    for _ in range(50):
        t = time.perf_counter()
        for _ in range(n):
            q.put(obj)
        for _ in range(n):
            q.get()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e9


PATTERNS = ["bytes64", "tuple", "dict", "rtt", "batch", "numpy", "numpy-4M", "1GiB",
            "percall-bytes64", "percall-tuple", "percall-dict", "percall-batch"]


def measure(pattern: str, mech: str, n: int, quick: bool) -> tuple[str, float]:
    """(column, value) of one run of ``pattern`` on ``mech``."""
    if pattern == "percall-batch":
        return "percall-batch64 ns/obj", percall_batch(mech)
    if pattern.startswith("percall-"):
        return f"{pattern} ns", percall(mech, SMALL[pattern[8:]])
    if pattern in SMALL:
        return f"{pattern} msg/s", small(mech, SMALL[pattern], n)
    if pattern == "rtt":
        return "rtt µs", rtt(mech, n // 20)
    if pattern == "batch":
        return "batch64 obj/s", batch(mech, n * (4 if mech != "mp.Queue" else 1))
    if pattern == "numpy":
        return "numpy 100MB GB/s", numpy_gbs(mech, 3 if quick else 5)
    if pattern == "numpy-4M":  # kipc.Queue(capacity="4M"): fewer fragment hand-offs (mp.Queue as is)
        return "numpy 4M-ring GB/s", numpy_gbs(mech, 3 if quick else 5, capacity="4M")
    return "1GiB s", one_gib(mech)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=PATTERNS, default=None, help="patterns to run (default: all)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--baseline", metavar="SRC", help="also run kipc.Queue from SRC (a row kipc.Queue@baseline)")
    ap.add_argument("--mech", nargs="+", help=argparse.SUPPRESS)  # --baseline's child: these mechanisms only
    args = ap.parse_args()
    n = 20_000 if args.quick else 100_000
    patterns = args.only or [p for p in PATTERNS if not (args.quick and p == "1GiB") and not p.startswith("percall")]
    mechs = args.mech or mechanisms()
    base = "kipc.Queue@baseline"
    rows: dict[str, dict[str, Any]] = {m: {"mechanism": m} for m in [*mechs, *([base] if args.baseline else [])]}
    for pattern in patterns:
        # interleaved: each repeat runs every mechanism once, so load swings hit all of them alike
        vals: dict[str, list[float]] = {m: [] for m in rows}
        col = ""
        for _ in range(args.repeat):
            if args.baseline:
                child = [sys.executable, __file__, "--only", pattern, "--repeat", "1", "--json", "--mech", "kipc.Queue"]
                res = subprocess.run(child, check=True, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": args.baseline}).stdout
                vals[base].append(next(v for k, v in json.loads(res)[0].items() if k != "mechanism"))
            for m in mechs:
                col, v = measure(pattern, m, n, args.quick)
                vals[m].append(v)
        for m in rows:  # best of N: the fastest time (lowest µs/s/ns), the highest rate
            rows[m][col] = min(vals[m]) if col.endswith(("µs", " s", " ns", "ns/obj")) else max(vals[m])
    out = list(rows.values())
    if args.json:
        print(json.dumps(out, indent=1))
        return
    keys = list(out[0])
    print(" | ".join(f"{k:>16}" for k in keys))
    for r in out:
        print(" | ".join(f"{r[k]:>16,.2f}" if isinstance(r[k], float) else f"{r[k]:>16}" for k in keys))
    mpq = rows["mp.Queue"]
    for name in ["kipc.Queue", *([base] if args.baseline else [])]:
        kq = rows[name]  # (for a time, a fraction: rtt's target is <= 1/50)
        print(f"{name} / mp.Queue:", ", ".join(
            f"{k} {kq[k] / mpq[k]:.3g}x" for k in keys[1:] if isinstance(kq[k], float) and mpq[k] == mpq[k]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
