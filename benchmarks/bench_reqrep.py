"""Request/reply round trip (kipc.Server/Client) against the transport's own ping-pong and pyzmq REQ/REP, same run.

    .venv/bin/python benchmarks/bench_reqrep.py [--n N] [--rounds R] [--schemes ring unix tcp]

For each scheme (after a warm-up of as many round trips: on this 2-core machine the
first few thousand round trips of a new process pair take ~40 µs until the scheduler puts
the two processes on different cores): the median round trip of ``client.request(64 B)`` to a server in a forked child,
and of a plain ping-pong over the same scheme (two channels), interleaved in rounds so a noisy
machine affects both alike. Ratios are request/reply over ping-pong. In the same rounds, pyzmq
REQ/REP over ``ipc://`` (REP in a forked child, 64 B each way; skipped with a note when pyzmq
is not installed) — the peer a Python user would otherwise pick; ``zmq/it`` is how many times
faster each kipc request/reply is than it (targets on ring://: request/reply <= 2x ping-pong,
>= 10x faster than pyzmq).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
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


def _zmq_reqrep(n: int) -> float:
    import zmq

    with tempfile.TemporaryDirectory() as d:
        addr = f"ipc://{d}/rep"
        ready_r, ready_w = os.pipe()
        pid = os.fork()  # before this process makes a context: never fork one
        if pid == 0:
            code = 1
            try:
                ctx = zmq.Context()
                rep = ctx.socket(zmq.REP)
                rep.bind(addr)
                os.write(ready_w, b"R")
                for _ in range(2 * n):
                    rep.recv()
                    rep.send(MSG)
                rep.close(0)
                ctx.term()
                code = 0
            finally:
                os._exit(code)
        os.close(ready_w)
        try:
            if os.read(ready_r, 1) != b"R":
                raise RuntimeError("the REP child did not start")
            ctx = zmq.Context()
            req = ctx.socket(zmq.REQ)
            req.RCVTIMEO = 10_000
            req.connect(addr)
            times = []
            for _ in range(2 * n):
                t = time.perf_counter_ns()
                req.send(MSG)
                req.recv()
                times.append(time.perf_counter_ns() - t)
            req.close(0)
            ctx.term()
        finally:
            os.close(ready_r)
            os.waitpid(pid, 0)
    return statistics.median(times[n:]) / 1000


def _have_zmq() -> bool:
    try:
        import zmq  # noqa: F401
    except ImportError as e:
        print(f"note: pyzmq not importable ({e}); its REQ/REP row is skipped", file=sys.stderr)
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--schemes", nargs="*", default=["ring", "unix", "tcp"])
    args = ap.parse_args()
    os.environ.setdefault("KIPC_TEST_NS", f"benchrr{os.getpid()}")
    zmq_ok = _have_zmq()
    rr: dict[str, list[float]] = {s: [] for s in args.schemes}
    pp: dict[str, list[float]] = {s: [] for s in args.schemes}
    zq: list[float] = []
    for _ in range(args.rounds):  # every contender in every round: a noisy spell hits them all
        for scheme in args.schemes:
            rr[scheme].append(_reqrep(scheme, args.n))
            pp[scheme].append(_pingpong(scheme, args.n))
        if zmq_ok:
            zq.append(_zmq_reqrep(args.n))
    z = min(zq) if zq else None
    print(f"median round trip, 64 B, best of {args.rounds} rounds of {args.n} (after as many warm-up)")
    print(f"{'scheme':8s} {'request/reply µs':>18s} {'ping-pong µs':>14s} {'rr/pp':>7s} {'zmq/it':>8s}")
    for scheme in args.schemes:
        a, b = min(rr[scheme]), min(pp[scheme])
        vs = f"{z / a:7.1f}x" if z else f"{'-':>8s}"
        print(f"{scheme:8s} {a:18.2f} {b:14.2f} {a / b:7.2f} {vs}")
    if z is not None:
        print(f"{'pyzmq':8s} {z:18.2f} {'(REQ/REP ipc://)':>14s}")


if __name__ == "__main__":
    main()
