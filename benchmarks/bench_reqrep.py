"""Request/reply round trip (kipc.Server/Client) against the transport's own ping-pong and pyzmq REQ/REP, same run.

    .venv/bin/python benchmarks/bench_reqrep.py [--n N] [--rounds R] [--schemes ring unix tcp] [--clients C]
        [--before FILE] [--cpu]

For each scheme (after a warm-up of as many round trips: on this 2-core machine the
first few thousand round trips of a new process pair take ~40 µs until the scheduler puts
the two processes on different cores): the median round trip of ``client.request(64 B)`` to a server in a forked child,
and of a plain ping-pong over the same scheme (two channels), interleaved in rounds so a noisy
machine affects both alike. Ratios are request/reply over ping-pong. In the same rounds, pyzmq
REQ/REP over ``ipc://`` (REP in a forked child, 64 B each way; skipped with a note when pyzmq
is not installed) — the peer a Python user would otherwise pick; ``zmq/it`` is how many times
faster each kipc request/reply is than it (targets on ring://: request/reply <= 2x ping-pong,
>= 10x faster than pyzmq). ``--clients C`` (default 8, 0 = skip) adds, per scheme, the requests
per second one server thread answers for C client processes at once (every reply checked).
``--before FILE`` adds, in the same rounds, the request/reply of another version of
``kipc/reqrep.py`` (e.g. ``git show REV:src/kipc/reqrep.py > /tmp/reqrep_before.py``), loaded
as a module of this kipc: the before/after ratio of a change, measured side by side.
``--cpu`` prints instead the CPU cost of each side of a ring:// round trip in one process
(no cross-core hand-off, so a loaded machine disturbs it far less): ``client.request`` with
its reply already in the client's ring, ``server.recv().reply`` with its request already in
the request ring, and the two sides of a ring ping-pong (recv + send each); best of 60 x 300.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import threading
import time
from types import ModuleType
from typing import Any

import kipc
from kipc import testing

MSG = b"x" * 64


def _load(path: str) -> ModuleType:
    """Another version of kipc/reqrep.py, as a module of this kipc package (its relative imports work)."""
    spec = importlib.util.spec_from_file_location("kipc._reqrep_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--before {path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _reqrep(scheme: str, n: int, impl: Any = kipc) -> float:
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else f"{scheme}://{testing.unique_name('bq')}"
    server = impl.Server(url, create=True)
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(2 * n):
                server.recv().reply(MSG)
        finally:
            os._exit(0)
    try:
        with impl.Client(server.url) as c:
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


def _many(scheme: str, clients: int, n: int) -> float:
    """Requests/s answered for `clients` client processes of `n` requests each (one server thread here)."""
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else f"{scheme}://{testing.unique_name('bm')}"
    with kipc.Server(url, create=True) as server:
        go_r, go_w = os.pipe()
        pids = []
        for _ in range(clients):  # forked before the server thread starts: no thread is forked
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    with kipc.Client(server.url) as c:
                        os.read(go_r, 1)
                        for i in range(n):
                            if c.request(b"%d" % i, timeout=30) != b"%d" % i:
                                raise AssertionError("a reply to another request")
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    req = server.recv(timeout=0.2)
                except kipc.DeadlineExceeded:
                    continue
                req.reply(req.data)

        th = threading.Thread(target=serve)
        th.start()
        try:
            time.sleep(0.3)  # the clients' connections are accepted
            t = time.perf_counter()
            os.write(go_w, b"g" * clients)
            for pid in pids:
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise RuntimeError(f"client {pid} failed")
            dt = time.perf_counter() - t
        finally:
            stop.set()
            th.join()
            os.close(go_r)
            os.close(go_w)
    return clients * n / dt


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


def _cpu(impl: Any, n: int = 300, best_of: int = 60) -> tuple[float, float]:
    """ns of CPU per round trip: (client.request, server.recv().reply), each with its input staged."""
    import itertools
    import struct

    with impl.Server(f"ring://{testing.unique_name('bc')}", create=True) as s, impl.Client(s.url) as c:
        # staging a reply needs the id the next request will carry: the client's id counter is
        # replaced by a known one (a benchmark's liberty with a private attribute)
        ret = c._return
        with kipc.open(f"ring://{ret.decode()}") as into_reply, kipc.open(s.url) as into_req:
            req_frame = struct.pack("<4sQH", b"KRQ1", 1, len(ret)) + ret + MSG

            def client() -> float:
                rid0 = next(c._ids) + 1
                c._ids = itertools.count(rid0)
                tot = 0
                for i in range(n):
                    into_reply.send(b"KRP1" + struct.pack("<Q", rid0 + i) + MSG)
                    t = time.perf_counter_ns()
                    c.request(MSG, timeout=10)
                    tot += time.perf_counter_ns() - t
                    into_req.recv()
                return tot / n

            def server() -> float:
                tot = 0
                for _ in range(n):
                    into_req.send(req_frame)
                    t = time.perf_counter_ns()
                    s.recv().reply(MSG)
                    tot += time.perf_counter_ns() - t
                    into_reply.recv()
                return tot / n

            return min(client() for _ in range(best_of)), min(server() for _ in range(best_of))


def _cpu_pingpong(n: int = 300, best_of: int = 60) -> float:
    """ns of CPU for one side of a ring ping-pong (recv one, send one), untimed channel calls."""
    with testing.channel_pair("ring") as (tx, rx):
        def side() -> float:
            tot = 0
            for _ in range(n):
                tx.send(MSG)
                t = time.perf_counter_ns()
                tx.send(rx.recv())
                tot += time.perf_counter_ns() - t
                rx.recv()
            return tot / n

        return min(side() for _ in range(best_of))


def _cpu_main(before: ModuleType | None) -> None:
    rows = [("after", kipc)] + ([("before", before)] if before is not None else [])
    pp = _cpu_pingpong()
    print(f"CPU per ring:// round trip, 64 B, one process (ns; best of 60 x 300); ping-pong side {pp:.0f}")
    print(f"{'version':8s} {'client':>8s} {'server':>8s} {'total':>8s} {'total/pp':>9s}")
    for name, impl in rows:
        cl, sv = _cpu(impl)
        print(f"{name:8s} {cl:8.0f} {sv:8.0f} {cl + sv:8.0f} {(cl + sv) / (2 * pp):8.2f}x")


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
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--before", metavar="FILE", help="another kipc/reqrep.py to measure side by side")
    ap.add_argument("--cpu", action="store_true", help="CPU per side of a ring round trip, one process")
    args = ap.parse_args()
    os.environ.setdefault("KIPC_TEST_NS", f"benchrr{os.getpid()}")
    before = _load(args.before) if args.before else None
    if args.cpu:
        _cpu_main(before)
        return
    zmq_ok = _have_zmq()
    old: dict[str, list[float]] = {s: [] for s in args.schemes}
    rr: dict[str, list[float]] = {s: [] for s in args.schemes}
    pp: dict[str, list[float]] = {s: [] for s in args.schemes}
    zq: list[float] = []
    many: dict[str, list[float]] = {s: [] for s in args.schemes}
    for _ in range(args.rounds):  # every contender in every round: a noisy spell hits them all
        for scheme in args.schemes:
            if before is not None:
                old[scheme].append(_reqrep(scheme, args.n, before))
            rr[scheme].append(_reqrep(scheme, args.n))
            pp[scheme].append(_pingpong(scheme, args.n))
            if args.clients:
                many[scheme].append(_many(scheme, args.clients, max(100, args.n // 4)))
        if zmq_ok:
            zq.append(_zmq_reqrep(args.n))
    z = min(zq) if zq else None
    print(f"median round trip, 64 B, best of {args.rounds} rounds of {args.n} (after as many warm-up)")
    extra = f" {'before µs':>10s} {'before/rr':>10s}" if before is not None else ""
    print(f"{'scheme':8s} {'request/reply µs':>18s} {'ping-pong µs':>14s} {'rr/pp':>7s} {'zmq/it':>8s}{extra}")
    for scheme in args.schemes:
        a, b = min(rr[scheme]), min(pp[scheme])
        vs = f"{z / a:7.1f}x" if z else f"{'-':>8s}"
        if before is not None:
            o = min(old[scheme])
            vs += f" {o:10.2f} {o / a:9.2f}x"
        print(f"{scheme:8s} {a:18.2f} {b:14.2f} {a / b:7.2f} {vs}")
    if z is not None:
        print(f"{'pyzmq':8s} {z:18.2f} {'(REQ/REP ipc://)':>14s}")
    if args.clients:
        print(f"{args.clients} client processes, one server thread: requests/s answered (best of {args.rounds})")
        for scheme in args.schemes:
            print(f"{scheme:8s} {max(many[scheme]):18,.0f}")


if __name__ == "__main__":
    main()
