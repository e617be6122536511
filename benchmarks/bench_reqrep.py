"""Request/reply round trip (kipc.Server/Client) against the transport's own ping-pong, same run.

    .venv/bin/python benchmarks/bench_reqrep.py [--n N] [--schemes ring unix tcp]

For each scheme (after a warm-up of as many round trips: on this 2-core machine the
first few thousand round trips of a new process pair take ~40 µs until the scheduler puts
the two processes on different cores): the median round trip of ``client.request(64 B)`` to a server in a forked child,
and of a plain ping-pong over the same scheme (two channels), interleaved in rounds so a noisy
machine affects both alike. Ratios are request/reply over ping-pong.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import kipc
from kipc import testing

MSG = b"x" * 64


def _reqrep(scheme: str, n: int) -> float:
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else f"{scheme}://{testing.unique_name('bq')}"
    server = kipc.Server(url, create=True)
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(2 * n):
                server.recv().reply(MSG)
        finally:
            os._exit(0)
    try:
        with kipc.Client(server.url) as c:
            times = []
            for _ in range(2 * n):
                t = time.perf_counter_ns()
                c.request(MSG, timeout=10)
                times.append(time.perf_counter_ns() - t)
            times = times[n:]
    finally:
        os.waitpid(pid, 0)
        server.close()
    return statistics.median(times) / 1000


def _pingpong(scheme: str, n: int) -> float:
    with testing.channel_pair(scheme) as (a_tx, a_rx), testing.channel_pair(scheme) as (b_tx, b_rx):
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(2 * n):
                    b_tx.send(a_rx.recv())
            finally:
                os._exit(0)
        times = []
        for _ in range(2 * n):
            t = time.perf_counter_ns()
            a_tx.send(MSG)
            b_rx.recv()
            times.append(time.perf_counter_ns() - t)
        times = times[n:]
        os.waitpid(pid, 0)
    return statistics.median(times) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--schemes", nargs="*", default=["ring", "unix", "tcp"])
    args = ap.parse_args()
    os.environ.setdefault("KIPC_TEST_NS", f"benchrr{os.getpid()}")
    print(f"{'scheme':8s} {'request/reply µs':>18s} {'ping-pong µs':>14s} {'ratio':>7s}")
    for scheme in args.schemes:
        rr, pp = [], []
        for _ in range(args.rounds):
            rr.append(_reqrep(scheme, args.n))
            pp.append(_pingpong(scheme, args.n))
        a, b = min(rr), min(pp)
        print(f"{scheme:8s} {a:18.2f} {b:14.2f} {a / b:7.2f}")


if __name__ == "__main__":
    main()
