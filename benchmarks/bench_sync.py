"""kipc.Lock / kipc.FileLock vs the locks a Python user would pick instead, measured in one run.

Rows (best of several repeats; compare ratios, the machine is shared and noisy):

* uncontended acquire+release in one thread: kipc.Lock vs threading.Lock and multiprocessing.Lock
  (target: kipc.Lock <= 0.3 us);
* contended: two forked processes each doing N acquire / increment / release rounds on one lock,
  time per round: kipc.Lock vs multiprocessing.Lock (target: <= 2x multiprocessing.Lock);
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


def _best(stmt: Callable[[], object], n: int, repeat: int) -> float:
    """Seconds per call, best of ``repeat`` runs of ``n`` calls."""
    return min(timeit.repeat(stmt, number=n, repeat=repeat)) / n


def _pair(acquire: Callable[[], object], release: Callable[[], object]) -> Callable[[], None]:
    def once() -> None:
        acquire()
        release()
    return once


def uncontended(n: int, repeat: int) -> dict[str, float]:
    out = {}
    with contextlib.closing(kipc.Lock(f"posix://{testing.unique_name('bench')}", create=True)) as lk:
        # timeit's loop calls one function per round: measure the loop alone and subtract it
        loop = _best(lambda: None, n, repeat)
        out["kipc.Lock"] = _best(_pair(lk.acquire, lk.release), n, repeat) - loop
        tl = threading.Lock()
        out["threading.Lock"] = _best(_pair(tl.acquire, tl.release), n, repeat) - loop
        ml = multiprocessing.Lock()
        out["multiprocessing.Lock"] = _best(_pair(ml.acquire, ml.release), n, repeat) - loop
    return out


def _contended_once(make: Callable[[], tuple[Callable[[], object], Callable[[], object]]], n: int) -> float:
    counter = multiprocessing.RawValue(ctypes.c_uint64, 0)
    acquire, release = make()
    r, w = os.pipe()
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # start together
            for _ in range(n):
                acquire()
                counter.value += 1
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
    return elapsed / (2 * n)


def contended(n: int, repeat: int) -> dict[str, float]:
    out = {}
    with contextlib.closing(kipc.Lock(f"posix://{testing.unique_name('bench')}", create=True)) as lk:
        out["kipc.Lock"] = min(_contended_once(lambda: (lk.acquire, lk.release), n) for _ in range(repeat))
    ml = multiprocessing.Lock()
    out["multiprocessing.Lock"] = min(_contended_once(lambda: (ml.acquire, ml.release), n) for _ in range(repeat))
    return out


def filelocks(n: int, repeat: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.lock")
        with contextlib.closing(kipc.FileLock(f"file://{path}")) as fl:
            out["kipc.FileLock"] = _best(_pair(fl.acquire, fl.release), n, repeat)
        try:
            import filelock
        except ImportError:
            out["filelock"] = None
        else:
            pl = filelock.FileLock(path)
            out["filelock"] = _best(_pair(pl.acquire, pl.release), n, repeat)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_unc, n_con, n_file, repeat = (50_000, 20_000, 5_000, 3) if args.quick else (500_000, 200_000, 30_000, 5)
    rows: list[tuple[str, str, str, str]] = []

    unc = uncontended(n_unc, repeat)
    k = unc["kipc.Lock"]
    rows.append(("uncontended acquire+release", "kipc.Lock", f"{k * 1e6:.3f} us", "target <= 0.3 us"))
    for other in ("threading.Lock", "multiprocessing.Lock"):
        rows.append(("", other, f"{unc[other] * 1e6:.3f} us", f"kipc/other {k / unc[other]:.2f}x"))

    con = contended(n_con, repeat)
    k, m = con["kipc.Lock"], con["multiprocessing.Lock"]
    rows.append(("contended, 2 processes, per round", "kipc.Lock", f"{k * 1e6:.3f} us", "target <= 2x mp"))
    rows.append(("", "multiprocessing.Lock", f"{m * 1e6:.3f} us", f"kipc/mp {k / m:.2f}x"))

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
