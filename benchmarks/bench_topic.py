"""Pub/sub fan-out: kipc.Topic on unix:// against pyzmq PUB/SUB over ipc://, same run.

    .venv/bin/python benchmarks/bench_topic.py [--quick] [--subs 1 2 4] [--sizes 64 65536] [--rounds R]

One publisher (this process) and N subscriber processes (os.fork). Each subscriber
receives every one of M messages; the figure is messages per second *received by each
subscriber* (M / the time from the first send until every subscriber has all M). kipc
runs with ``overflow="block"`` (lossless); pyzmq with ``SNDHWM=RCVHWM=0`` (unbounded
queues, so it drops nothing either) and a 0.3 s pause after its subscribers connect (the
"slow joiner": a SUB socket connects asynchronously). Rounds interleave kipc and pyzmq so a
noisy machine affects both alike; best of R rounds. ``ratio`` = kipc / pyzmq (> 1: kipc faster).
Without pyzmq the kipc rows are printed alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from types import ModuleType

import kipc
from kipc import testing

zmq: ModuleType | None
try:
    import zmq
except ImportError:  # the peer is optional
    zmq = None


def _wait_bytes(rfd: int, n: int) -> None:
    got = 0
    while got < n:
        chunk = os.read(rfd, n - got)
        if not chunk:
            raise RuntimeError("a subscriber exited early")
        got += len(chunk)


def _children(n: int, body: Callable[[int], None]) -> tuple[list[int], int]:
    rfd, wfd = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(rfd)
                body(wfd)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(wfd)
    return pids, rfd


def _reap(pids: list[int], rfd: int) -> None:
    os.close(rfd)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"subscriber {pid} failed")


def kipc_topic(n_subs: int, size: int, m: int) -> float:
    url = f"unix://{testing.unique_name('bt')}"
    msg = b"x" * size

    def sub(wfd: int) -> None:
        with kipc.Topic(url, timeout=10) as t:
            os.write(wfd, b"r")
            for _ in range(m):
                t.recv(timeout=30)
        os.write(wfd, b"d")

    with kipc.Topic(url, create=True, subscribe=False) as pub:
        pids, rfd = _children(n_subs, sub)
        try:
            _wait_bytes(rfd, n_subs)  # all joined
            t0 = time.perf_counter()
            for _ in range(m):
                pub.send(msg)
            _wait_bytes(rfd, n_subs)
            elapsed = time.perf_counter() - t0
        finally:
            _reap(pids, rfd)
    return m / elapsed


def raw_fanout(n_subs: int, size: int, m: int) -> float:
    """The baseline a careful user writes by hand: one socketpair per subscriber, blocking
    ``sendall`` of a length-prefixed frame to each in turn, ``recv_into`` on the other side."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n_subs)]
    frame = struct.pack("<I", size) + b"x" * size
    rfd, wfd = os.pipe()
    pids = []
    for i in range(n_subs):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(rfd)
                me = pairs[i][1]
                os.write(wfd, b"r")
                want, buf = m * len(frame), bytearray(1 << 18)
                while want:
                    want -= me.recv_into(buf, min(len(buf), want))
                os.write(wfd, b"d")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(wfd)
    ends = [p[0] for p in pairs]
    for p in pairs:
        p[1].close()
    try:
        _wait_bytes(rfd, n_subs)
        t0 = time.perf_counter()
        for _ in range(m):
            for e in ends:
                e.sendall(frame)
        _wait_bytes(rfd, n_subs)
        elapsed = time.perf_counter() - t0
    finally:
        for e in ends:
            e.close()
        _reap(pids, rfd)
    return m / elapsed


def zmq_pubsub(n_subs: int, size: int, m: int) -> float:
    assert zmq is not None
    with tempfile.TemporaryDirectory() as d:
        addr = f"ipc://{d}/pub"
        msg = b"x" * size

        def sub(wfd: int) -> None:
            ctx = zmq.Context()
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.RCVHWM, 0)
            s.connect(addr)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            os.write(wfd, b"r")
            for _ in range(m):
                s.recv()
            os.write(wfd, b"d")
            s.close(0)
            ctx.term()

        pids, rfd = _children(n_subs, sub)  # before this process makes a context: never fork one
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.bind(addr)
        try:
            _wait_bytes(rfd, n_subs)
            time.sleep(0.3)  # slow joiner: let every SUB's connect complete
            t0 = time.perf_counter()
            for _ in range(m):
                pub.send(msg)
            _wait_bytes(rfd, n_subs)
            elapsed = time.perf_counter() - t0
        finally:
            pub.close(0)
            ctx.term()
            _reap(pids, rfd)
    return m / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 65536])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"{'subs':>4} {'size':>7} {'kipc unix msg/s/sub':>20} {'raw socket':>12} {'kipc/raw':>8} "
          f"{'pyzmq ipc msg/s/sub':>20} {'kipc/zmq':>8}")
    for size in args.sizes:
        m = (20_000 if args.quick else 50_000) if size <= 4096 else (1_000 if args.quick else 3_000)
        for n in args.subs:
            best_k = best_r = best_z = 0.0
            for _ in range(args.rounds):
                best_k = max(best_k, kipc_topic(n, size, m))
                best_r = max(best_r, raw_fanout(n, size, m))
                if zmq is not None:
                    best_z = max(best_z, zmq_pubsub(n, size, m))
            z = f"{best_z:20,.0f}" if zmq is not None else f"{'(no pyzmq)':>20}"
            ratio = f"{best_k / best_z:8.2f}" if best_z else f"{'-':>8}"
            print(f"{n:>4} {size:>7} {best_k:20,.0f} {best_r:12,.0f} {best_k / best_r:8.2f} {z} {ratio}", flush=True)


if __name__ == "__main__":
    main()
