"""kipc.signals — sigqueue payloads, RT ordering/queueing vs standard coalescing, filters, mask rule."""

from __future__ import annotations

import os
import signal

import pytest

import kipc
from kipc import signals, testing

# A receiver child: blocks until the parent says "go", so every signal is pending before it reads.
RECEIVER = """
import sys, signal
from kipc import signals
sigs = [int(s) for s in sys.argv[1].split(',')]
r = signals.Receiver(sigs, any_code=sys.argv[2] == 'any')
print('READY', flush=True)
sys.stdin.readline()
while True:
    try:
        i = r.recv(timeout=0.3)
    except TimeoutError:
        break
    print(i.signo, i.value, i.code, i.pid, i.uid, flush=True)
print('END', r.dropped, flush=True)
"""


def _collect(child: testing.Child) -> tuple[list[list[int]], int]:
    child.write("go\n")
    rows = []
    while True:
        line = child.readline()
        if line.startswith("END"):
            child.check()
            return rows, int(line.split()[1])
        rows.append([int(x) for x in line.split()])


def test_rt_signals_queue_in_order_with_payloads() -> None:
    rt, rt2 = signal.SIGRTMIN, signal.SIGRTMIN + 1
    with testing.spawn(RECEIVER, f"{rt},{rt2}", "queue", stdin=True) as child:
        for v in range(20):
            signals.send(child.pid, v * 1000 - 5)
        signals.send(child.pid, 77, signo=rt2)
        rows, dropped = _collect(child)
    assert [r[1] for r in rows if r[0] == rt] == [v * 1000 - 5 for v in range(20)]  # all queued, in order
    assert [r[1] for r in rows if r[0] == rt2] == [77]
    assert all(r[2] == signals.SI_QUEUE and r[3] == os.getpid() and r[4] == os.getuid() for r in rows)
    assert dropped == 0


def test_standard_signals_coalesce_and_kill_is_filtered() -> None:
    usr1 = signal.SIGUSR1
    with testing.spawn(RECEIVER, f"{usr1},{signal.SIGRTMIN}", "queue", stdin=True) as child:
        for v in (1, 2, 3):
            signals.send(child.pid, v, signo=usr1)  # pending already: the 2nd and 3rd are merged away
        os.kill(child.pid, signal.SIGRTMIN)  # SI_USER: not accepted by default
        signals.send(child.pid, 9)
        rows, dropped = _collect(child)
    assert [(r[0], r[1]) for r in rows] == [(usr1, 1), (signal.SIGRTMIN, 9)]
    assert dropped == 1


def test_any_code_accepts_kill() -> None:
    with testing.spawn(RECEIVER, f"{signal.SIGRTMIN}", "any", stdin=True) as child:
        os.kill(child.pid, signal.SIGRTMIN)
        rows, _ = _collect(child)
    assert [(r[0], r[2]) for r in rows] == [(signal.SIGRTMIN, signals.SI_USER)]


def test_receiver_refuses_threads_that_do_not_block_and_asyncio_works() -> None:
    code = """
import asyncio, os, signal, threading
import kipc
from kipc import signals
sig = signal.SIGRTMIN + 3
ev = threading.Event()
t = threading.Thread(target=ev.wait)
t.start()
try:
    signals.Receiver(sig)
    print('ACCEPTED')
except kipc.InvalidArgument as e:
    print('REFUSED', 'do not block' in str(e))
ev.set(); t.join()
r = signals.Receiver(sig)  # no other thread now
t2 = threading.Thread(target=lambda: None); t2.start(); t2.join()  # inherits the mask: fine
async def main():
    asyncio.get_running_loop().call_later(0.05, signals.send, os.getpid(), 123, sig)
    return await r.arecv(timeout=5)
print('GOT', asyncio.run(main()).value)
try:
    r.recv(timeout=0.05)
except kipc.DeadlineExceeded:
    print('TIMEOUT')
r.close()
"""
    with testing.spawn(code, ready=False) as child:
        assert child.readline() == "REFUSED True"
        assert child.readline() == "GOT 123"
        assert child.readline() == "TIMEOUT"
        child.check()


def test_send_validates_before_syscall() -> None:
    with pytest.raises(kipc.InvalidArgument):
        signals.send(os.getpid(), 2**31)
    with pytest.raises(kipc.InvalidArgument):
        signals.send(0, 1)
    with pytest.raises(kipc.InvalidArgument):
        signals.send(os.getpid(), 1, signo=signal.SIGKILL)
    with pytest.raises(kipc.NotFound):
        signals.send(2**22 + 12345, 1)  # no such pid (above pid_max's default)


def test_close_from_another_thread_wakes_recv_and_arecv_is_cancel_safe() -> None:
    code = """
import asyncio, os, threading, time
import kipc
from kipc import signals
r = signals.Receiver(signals.SIGRTMIN + 4)   # before any thread: they inherit the blocked mask
out = []
def blocked():
    try:
        r.recv()
    except kipc.ChannelClosed as e:
        out.append(("closed", "closed by this process" in str(e)))
t = threading.Thread(target=blocked); t.start()
time.sleep(0.2)
t0 = time.monotonic(); r.close(); t.join(5)
print("WOKE", out, time.monotonic() - t0 < 0.5)
r = signals.Receiver(signals.SIGRTMIN + 4)
async def main():
    cancels = 0
    for _ in range(50):
        try:
            await asyncio.wait_for(r.arecv(), 0.001)
        except TimeoutError:
            cancels += 1
    signals.send(os.getpid(), 7, signals.SIGRTMIN + 4)
    return cancels, (await r.arecv(timeout=5)).value
print("ASYNC", *asyncio.run(main()))
r.close()
"""
    with testing.spawn(code, ready=False) as child:
        assert child.readline() == "WOKE [('closed', True)] True"
        assert child.readline() == "ASYNC 50 7"
        child.check()
