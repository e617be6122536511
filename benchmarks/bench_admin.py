"""What issue 16's listing work costs: TCP listeners in ``kipc ls``, ``kipc top`` sampling, ``wait=``.

Interleaved, best of N, in one process (the shared 2-core machine swings 3x between runs):

* ``kipc.listen("tcp://127.0.0.1:0")`` + ``close()`` against a bare socket bind/listen/close
  (the peer), and the owner record that marks a kipc listener (record + forget) alone;
* one ``admin.inventory()`` (what ``kipc ls`` and each ``kipc top`` refresh do), and its
  ``--kind tcp`` part (sock_diag, or ``/proc/net/tcp{,6}`` read in the same run for
  comparison, + the ``/proc/PID/fd`` walk);
* ``SharedMemory(url, wait=...)``: how late an opener notices an object created while it waits
  (the back-off is 5 ms doubling to 200 ms).

    .venv/bin/python benchmarks/bench_admin.py [REPEATS]
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import kipc
from kipc import _owners, _procnet, admin, testing

os.environ.setdefault("KIPC_TEST_NS", f"benchadm{os.getpid()}")


def best_us(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t) / n / 1e3


def kipc_listen() -> None:
    kipc.listen("tcp://127.0.0.1:0").close()


def raw_listen() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    s.close()


def record_only() -> None:
    _owners.record("tcp://127.0.0.1:1", "tcp", identity={"ino": 1})
    _owners.forget("tcp://127.0.0.1:1")


def wait_lateness(delay: float) -> float:
    """Seconds between a creator's create and the waiting opener's return."""
    url = f"posix://{testing.unique_name('benchwait')}"
    made: list[tuple[float, kipc.SharedMemory]] = []

    def create() -> None:
        time.sleep(delay)
        seg = kipc.SharedMemory(url, size=4096, create=True)
        made.append((time.monotonic(), seg))

    t = threading.Thread(target=create)
    t.start()
    seg = kipc.SharedMemory(url, wait=10)
    back = time.monotonic()
    t.join()
    seg.close()
    made[0][1].close()
    return back - made[0][0]


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    rows: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        rows[name] = min(rows.get(name, float("inf")), value)

    with kipc.listen("tcp://127.0.0.1:0"):  # at least one kipc listener for the scans
        for _ in range(reps):  # interleaved: each repeat measures every row once
            keep("listen+close, bare socket (peer)", best_us(raw_listen, 200))
            keep("listen+close, kipc.listen", best_us(kipc_listen, 200))
            keep("owner record + forget alone", best_us(record_only, 200))
            keep("admin.inventory(), all kinds", best_us(admin.inventory, 5))
            keep("admin.inventory(kinds=['tcp'])", best_us(lambda: admin.inventory(kinds=["tcp"]), 20))
            keep("listening sockets via sock_diag", best_us(_procnet.tcp_listeners, 20))
            keep("listening sockets via /proc/net/tcp{,6}", best_us(_procnet._proc, 20))
    late = sorted(wait_lateness(d) for d in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.3))
    procs = sum(1 for p in os.listdir("/proc") if p.isdigit())
    print(f"bench_admin: best of {reps} interleaved repeats, {procs} processes on this machine")
    for name, us in rows.items():
        print(f"  {name:40s} {us:10.1f} us")
    peer, mine = rows["listen+close, bare socket (peer)"], rows["listen+close, kipc.listen"]
    print(f"  kipc.listen / bare socket: {mine / peer:.2f}x")
    text, diag = rows["listening sockets via /proc/net/tcp{,6}"], rows["listening sockets via sock_diag"]
    print(f"  /proc/net/tcp / sock_diag: {text / diag:.1f}x")
    print(f"  wait= lateness after creation (7 delays 0.05..1.3 s): median {late[3] * 1e3:.0f} ms, "
          f"max {late[-1] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
