"""kipc's sysvmq:// and posixmq:// channels vs sysv_ipc / posix_ipc used directly, between two processes.

Patterns: 64 B round trip (ping-pong), 64 B stream and 4 KiB stream (one way,
timed until the consumer has everything). Each row: seconds per message for
the raw library and for kipc, and the ratio (target <= 1.25).

    .venv/bin/python benchmarks/bench_kernel.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import posix_ipc
import sysv_ipc

import kipc
from kipc import testing

# The child side: the same loop for raw and kipc, selected by argv.
CHILD = r"""
import sys, posix_ipc, sysv_ipc, kipc
impl, mech, pattern, n, a, b = sys.argv[1:7]
n = int(n)
if mech == 'sysvmq':
    if impl == 'raw':
        q = sysv_ipc.MessageQueue(int(a), max_message_size=8192)
        recv = lambda t: q.receive(True, t)[0]
        send = lambda m, t: q.send(m, True, t)
    else:
        q = kipc.open(f'sysvmq://{a}')
        recv = lambda t: q.recv(type=t)
        send = lambda m, t: q.send(m, type=t)
else:
    if impl == 'raw':
        qa, qb = posix_ipc.MessageQueue('/' + a), posix_ipc.MessageQueue('/' + b)
        recv = lambda t: qa.receive()[0]
        send = lambda m, t: qb.send(m)
    else:
        qa, qb = kipc.open('posixmq://' + a), kipc.open('posixmq://' + b)
        recv = lambda t: qa.recv()
        send = lambda m, t: qb.send(m)
print('READY', flush=True)
if pattern == 'rt':
    for _ in range(n):
        send(recv(1), 2)
else:
    for _ in range(n):
        recv(1)
    send(b'done', 2)
"""


def _one(impl: str, mech: str, pattern: str, size: int, n: int) -> float:
    payload = b"x" * size
    key = testing.unique_key()
    na, nb = testing.unique_name("a"), testing.unique_name("b")
    if mech == "sysvmq":
        q = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, 0o600, max_message_size=8192)
        cleanup: list[Any] = [q.remove]
        if impl == "raw":
            def send(m: bytes) -> None:
                q.send(m, True, 1)

            def recv() -> bytes:
                return q.receive(True, 2)[0]  # type: ignore[no-any-return]
        else:
            ch = kipc.open(f"sysvmq://{key}")

            def send(m: bytes) -> None:
                ch.send(m, type=1)

            def recv() -> bytes:
                return ch.recv(type=2)  # type: ignore[no-any-return]
    else:
        qa = posix_ipc.MessageQueue("/" + na, posix_ipc.O_CREX, 0o600, 10, 8192)
        qb = posix_ipc.MessageQueue("/" + nb, posix_ipc.O_CREX, 0o600, 10, 8192)
        cleanup = [qa.unlink, qb.unlink, qa.close, qb.close]
        if impl == "raw":
            def send(m: bytes) -> None:
                qa.send(m)

            def recv() -> bytes:
                return qb.receive()[0]  # type: ignore[no-any-return]
        else:
            ca, cb = kipc.open("posixmq://" + na), kipc.open("posixmq://" + nb)
            cleanup += [ca.close, cb.close]

            def send(m: bytes) -> None:
                ca.send(m)

            def recv() -> bytes:
                return cb.recv()  # type: ignore[no-any-return]
    target = str(key) if mech == "sysvmq" else na
    child = testing.spawn(CHILD, impl, mech, "rt" if pattern == "rt" else "stream", str(n), target, nb)
    try:
        t0 = time.perf_counter()
        if pattern == "rt":
            for _ in range(n):
                send(payload)
                recv()
        else:
            for _ in range(n):
                send(payload)
            recv()
        dt = time.perf_counter() - t0
        child.check()
    finally:
        child.close()
        for f in cleanup:
            f()
    return dt / n


def run(quick: bool = False) -> list[dict[str, Any]]:
    """One row per (mechanism, pattern): raw and kipc seconds per message, and the ratio."""
    rows = []
    cases = [("rt", 64, 2000 if quick else 20000), ("stream", 64, 20000 if quick else 200000),
             ("stream", 4096, 5000 if quick else 50000)]
    for mech in ("sysvmq", "posixmq"):
        for pattern, size, n in cases:
            # best of 3 alternating runs: the machine is shared, take the least disturbed
            raw = min(_one("raw", mech, pattern, size, n) for _ in range(3))
            kp = min(_one("kipc", mech, pattern, size, n) for _ in range(3))
            rows.append({"mechanism": mech, "pattern": f"{size} B {'round trip' if pattern == 'rt' else 'stream'}",
                         "messages": n, "raw_us": raw * 1e6, "kipc_us": kp * 1e6, "ratio": kp / raw})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("KIPC_TEST_NS", f"kipcbench{os.getpid()}")
    print(f"{'mechanism':9} {'pattern':16} {'raw µs/msg':>11} {'kipc µs/msg':>12} {'ratio':>6}")
    for r in run(args.quick):
        print(f"{r['mechanism']:9} {r['pattern']:16} {r['raw_us']:11.2f} {r['kipc_us']:12.2f} {r['ratio']:6.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
