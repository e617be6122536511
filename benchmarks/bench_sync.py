"""kipc.Lock / kipc.FileLock vs the locks a Python user would pick instead, measured in one run.

Rows (best of several repeats; compare ratios, the machine is shared and noisy):

* uncontended acquire+release in one thread: kipc.Lock vs threading.Lock and multiprocessing.Lock
  (target: kipc.Lock <= 0.3 us);
* contended: two forked processes each doing N acquire / increment / release rounds on one lock,
  time per round and how many rounds took the lock from the other process (hand-offs; neither
  lock is fair, so a releaser often re-takes it): kipc.Lock vs multiprocessing.Lock
  (the hand-off row below is the one the target applies to);
* hand-off: two forked processes pass three locks round in strict alternation (each acquire
  waits for and takes a lock the other process just released; no polling), time per hand-off:
  kipc.Lock vs multiprocessing.Lock (target: <= 2x multiprocessing.Lock);
* FileLock acquire+release (flock) vs the ``filelock`` package (target: within 1.5x);
  "unavailable" if ``filelock`` is not installed (``.venv/bin/pip install filelock``).

    .venv/bin/python benchmarks/bench_sync.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing
import os
import tempfile
import threading
import time
import timeit
from collections.abc import Callable

import kipc
from kipc import testing


def _pair_time(acquire: Callable[[], object], release: Callable[[], object], n: int, repeat: int) -> float:
    """Seconds per ``acquire(); release()``, best of ``repeat`` runs of ``n`` (timeit's loop included)."""
    return min(timeit.repeat("a(); r()", number=n, repeat=repeat, globals={"a": acquire, "r": release})) / n


def uncontended(n: int, repeat: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.closing(kipc.Lock(f"posix://{testing.unique_name('bench')}", create=True)) as lk:
        tl = threading.Lock()
        ml = multiprocessing.Lock()
        for _ in range(repeat):  # interleaved, so a noisy moment hits all three
            for name, lock in (("kipc.Lock", lk), ("threading.Lock", tl), ("multiprocessing.Lock", ml)):
                t = _pair_time(lock.acquire, lock.release, n, 1)
                out[name] = min(out.get(name, t), t)
    return out


def _contended_once(make: Callable[[], tuple[Callable[[], object], Callable[[], object]]],
                    n: int) -> tuple[float, int]:
    """Seconds per round and the number of hand-offs (rounds where the other process had the lock last)."""
    counter = multiprocessing.RawValue(ctypes.c_uint64, 0)
    last = multiprocessing.RawValue(ctypes.c_uint64, 0)
    handoffs = multiprocessing.RawValue(ctypes.c_uint64, 0)
    acquire, release = make()
    r, w = os.pipe()
    kids = []
    for me in (1, 2):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # start together
            for _ in range(n):
                acquire()
                counter.value += 1
                if last.value != me:
                    handoffs.value += 1
                    last.value = me
                release()
            os._exit(0)
        kids.append(pid)
    os.close(r)
    t0 = time.perf_counter()
    os.write(w, b"go")
    for pid in kids:
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - t0
    os.close(w)
    assert counter.value == 2 * n, counter.value
    return elapsed / (2 * n), int(handoffs.value)


def contended(n: int, repeat: int) -> dict[str, tuple[float, int]]:
    out = {}
    with contextlib.closing(kipc.Lock(f"posix://{testing.unique_name('bench')}", create=True)) as lk:
        out["kipc.Lock"] = min(_contended_once(lambda: (lk.acquire, lk.release), n) for _ in range(repeat))
    ml = multiprocessing.Lock()
    out["multiprocessing.Lock"] = min(_contended_once(lambda: (ml.acquire, ml.release), n) for _ in range(repeat))
    return out


# Strict alternation with three locks (no polling): every acquire waits for, and takes, a lock the
# other process has just released, so each acquire is a real hand-off between the two processes.
_ROTATION = {1: ("A", [("lock", "B"), ("unlock", "A"), ("lock", "C"), ("unlock", "B"), ("lock", "A"), ("unlock", "C")]),
             2: ("C", [("lock", "A"), ("unlock", "C"), ("lock", "B"), ("unlock", "A"), ("lock", "C"), ("unlock", "B")])}


def _handoff_once(locks: dict[str, tuple[Callable[[], object], Callable[[], object]]], n: int) -> float:
    """Seconds per hand-off: two forked processes pass three locks back and forth ``n`` times."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    kids = []
    for me in (1, 2):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(go_w)
            first, steps = _ROTATION[me]
            ops = [locks[name][0 if op == "lock" else 1] for op, name in steps]
            locks[first][0]()
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            for _ in range(n):
                for op in ops:
                    op()
            locks[first][1]()  # each round ends holding the first lock again: leave everything free
            os._exit(0)
        kids.append(pid)
    os.close(ready_w)
    os.close(go_r)
    got = b""
    while len(got) < 2:
        got += os.read(ready_r, 2)
    t0 = time.perf_counter()
    os.write(go_w, b"gg")
    for pid in kids:
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - t0
    os.close(ready_r)
    os.close(go_w)
    return elapsed / (2 * 3 * n)


def handoff(n: int, repeat: int) -> dict[str, float]:
    out = {}
    with contextlib.ExitStack() as stack:
        kl = {name: stack.enter_context(contextlib.closing(
            kipc.Lock(f"posix://{testing.unique_name('handoff')}", create=True))) for name in "ABC"}
        out["kipc.Lock"] = min(_handoff_once({k: (v.acquire, v.release) for k, v in kl.items()}, n)
                               for _ in range(repeat))
    ml = {name: multiprocessing.Lock() for name in "ABC"}
    out["multiprocessing.Lock"] = min(_handoff_once({k: (v.acquire, v.release) for k, v in ml.items()}, n)
                                      for _ in range(repeat))
    return out


def filelocks(n: int, repeat: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.lock")
        with contextlib.closing(kipc.FileLock(f"file://{path}")) as fl:
            out["kipc.FileLock"] = _pair_time(fl.acquire, fl.release, n, repeat)
        try:
            import filelock
        except ImportError:
            out["filelock"] = None
        else:
            pl = filelock.FileLock(path)
            out["filelock"] = _pair_time(pl.acquire, pl.release, n, repeat)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_unc, n_con, n_hand, n_file, repeat = ((50_000, 20_000, 2_000, 5_000, 3) if args.quick
                                            else (500_000, 200_000, 20_000, 30_000, 5))
    rows: list[tuple[str, str, str, str]] = []

    unc = uncontended(n_unc, repeat)
    k = unc["kipc.Lock"]
    rows.append(("uncontended acquire+release", "kipc.Lock", f"{k * 1e6:.3f} us", "target <= 0.3 us"))
    for other in ("threading.Lock", "multiprocessing.Lock"):
        rows.append(("", other, f"{unc[other] * 1e6:.3f} us", f"kipc/other {k / unc[other]:.2f}x"))

    con = contended(n_con, repeat)
    (k, kh), (m, mh) = con["kipc.Lock"], con["multiprocessing.Lock"]
    rows.append(("contended, 2 processes, per round", "kipc.Lock", f"{k * 1e6:.3f} us",
                 f"{kh} hand-offs in {2 * n_con} rounds"))
    rows.append(("", "multiprocessing.Lock", f"{m * 1e6:.3f} us",
                 f"kipc/mp {k / m:.2f}x; {mh} hand-offs in {2 * n_con} rounds"))

    ho = handoff(n_hand, repeat)
    k, m = ho["kipc.Lock"], ho["multiprocessing.Lock"]
    rows.append(("hand-off between 2 processes (3-lock rotation)", "kipc.Lock", f"{k * 1e6:.2f} us",
                 "target <= 2x mp"))
    rows.append(("", "multiprocessing.Lock", f"{m * 1e6:.2f} us", f"kipc/mp {k / m:.2f}x"))

    fls = filelocks(n_file, repeat)
    kf, pf = fls["kipc.FileLock"], fls["filelock"]
    assert kf is not None
    rows.append(("FileLock acquire+release (flock)", "kipc.FileLock", f"{kf * 1e6:.2f} us", "target <= 1.5x filelock"))
    if pf is None:
        rows.append(("", "filelock", "unavailable", "pip install filelock"))
    else:
        rows.append(("", "filelock", f"{pf * 1e6:.2f} us", f"kipc/filelock {kf / pf:.2f}x"))

    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
