"""kipc.Lock crash test: holders SIGKILLed while holding (100 in `make test`, 1,000 in `make reliability`).

A spawned helper forks the holders (a fork costs ~1 ms where a fresh interpreter costs ~200 ms).
Each holder k+1 is already blocked in ``acquire()`` when holder k is SIGKILLed: the kernel's robust
list wakes it, its acquire must succeed and report the death (``recovered``, ``dead_pid == k``).
Every wait has a deadline: a wedged lock fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import kipc
from kipc import testing

FACTORY = """
import os, sys, time
import kipc
url = sys.argv[1]

def say(*words):  # one write(2) per line: the factory and its children share the pipe, and an
    os.write(1, (' '.join(map(str, words)) + '\\n').encode())  # unbuffered print writes word by word

say('READY')
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(' ')
    if cmd == 'fork':
        pid = os.fork()
        if pid == 0:
            lk = kipc.Lock(url)
            say('WAITING', os.getpid())
            ok = lk.acquire(timeout=20)
            say('HELD', os.getpid(), ok, lk.recovered, lk.dead_pid, time.monotonic())
            time.sleep(120)
            os._exit(0)
        say('FORKED', pid)
    elif cmd == 'reap':
        _, status = os.waitpid(int(arg), 0)
        say('REAPED', arg, status)
    elif cmd == 'quit':
        break
"""


def test_sigkilled_holders_every_next_acquire_recovers(scale: object, figures: object) -> None:
    """Lock: holders SIGKILLed while holding; every next acquire succeeds and reports the death"""
    n = scale.n(100, 1000)  # type: ignore[attr-defined]
    url = f"posix://{testing.unique_name('crash')}"
    with contextlib.closing(kipc.Lock(url, create=True)) as lk, \
            testing.spawn(FACTORY, url, stdin=True) as factory:
        pending: list[str] = []

        def line_for(prefix: str, pid: int | None = None) -> tuple[str, ...]:
            """Next line starting with prefix (for pid), keeping the others for later."""
            end = time.monotonic() + 20
            while True:
                for i, ln in enumerate(pending):
                    parts = tuple(ln.split())
                    if parts[0] == prefix and (pid is None or int(parts[1]) == pid):
                        del pending[i]
                        return parts
                left = end - time.monotonic()
                assert left > 0, f"no {prefix} {pid} line: a hang ({pending})"
                pending.append(factory.readline(left))

        def fork() -> int:
            factory.write("fork\n")
            pid = int(line_for("FORKED")[1])
            line_for("WAITING", pid)
            return pid

        holder = fork()
        first = line_for("HELD", holder)
        assert first[2] == "True" and first[3] == "False"
        recovered = 0
        worst = 0.0
        for _ in range(n):
            waiter = fork()  # blocked (or about to block) in acquire while `holder` holds
            t0 = time.monotonic()
            os.kill(holder, signal.SIGKILL)
            parts = line_for("HELD", waiter)
            worst = max(worst, float(parts[5]) - t0)
            assert parts[2] == "True", f"acquire after the death of {holder} failed: {parts}"
            assert parts[3] == "True" and int(parts[4]) == holder, f"death of {holder} not reported: {parts}"
            recovered += 1
            factory.write(f"reap {holder}\n")
            line_for("REAPED", holder)
            holder = waiter
        os.kill(holder, signal.SIGKILL)
        factory.write(f"reap {holder}\nquit\n")
        line_for("REAPED", holder)
        factory.check(timeout=20)
        assert lk.acquire(timeout=5) and lk.recovered and lk.dead_pid == holder
        lk.release()
        assert lk.info()["recoveries"] == n + 1
        figures.record("Lock", f"{n} holders SIGKILLed while holding",  # type: ignore[attr-defined]
                       f"{recovered} recovered, 0 hangs, worst wake-up {worst * 1000:.1f} ms",
                       target="every acquire recovers")
