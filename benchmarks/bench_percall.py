"""Per-call CPU cost of send and recv, 64 B, in one process (best of many repeats).

Two-process benchmarks on the shared 2-core machine swing by 3x from run to run;
the best of 200 repeats of 'send n, then receive n' in one process isolates what
kipc's own code costs per call, which is what a change to the hot path moves.
Run it with two installs to compare (e.g. a worktree of the commit before):

    .venv/bin/python benchmarks/bench_percall.py LABEL [scheme ...]   # pipe is always measured
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import kipc
from kipc import testing

os.environ.setdefault("KIPC_TEST_NS", f"benchpc{os.getpid()}")
msg = b"x" * 64
#: messages per repeat: few enough that the channel never fills (one process sends, then receives)
BATCH = {"posixmq": 8, "sysvmq": 100, "unix": 100, "tcp": 100}


def cost(tx: Any, rx: Any, n: int = 2000, reps: int = 200) -> tuple[float, float]:
    """Best per-call ns of send and of recv over ``reps`` repeats of n sends then n receives."""
    best_s = best_r = 1e9
    for _ in range(reps):
        t = time.perf_counter_ns()
        for _ in range(n):
            tx.send(msg)
        t2 = time.perf_counter_ns()
        for _ in range(n):
            rx.recv()
        t3 = time.perf_counter_ns()
        best_s = min(best_s, (t2 - t) / n)
        best_r = min(best_r, (t3 - t2) / n)
    return best_s, best_r


def main() -> None:
    out = []
    r, w = kipc.pipe()
    out.append(("pipe", *cost(w, r)))
    r.close()
    w.close()
    for scheme in sys.argv[2:]:
        with testing.channel_pair(scheme) as (tx, rx):
            out.append((scheme, *cost(tx, rx, n=BATCH.get(scheme, 2000))))
    print(sys.argv[1] if len(sys.argv) > 1 else "kipc",
          "  ".join(f"{s}: send {a:.0f} ns recv {b:.0f} ns" for s, a, b in out))


if __name__ == "__main__":
    main()
