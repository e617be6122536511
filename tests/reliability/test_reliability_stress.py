"""Reliability campaign, stress: Ctrl-C during every blocking call, N x M producers x consumers.

Short counts in ``make test``; ``make reliability`` (KIPC_RELIABILITY=full) runs the long ones.
Full counts (about 1-2 minutes per scheme on a loaded 2-core box): 10^6 messages per N x M
config on sysvmq and posixmq, 100,000 on file (fsync=False; ~1,600-6,000 msgs/s).
(Ctrl-C during a blocking ``recv`` on every scheme is in test_reliability_generic.py; the
ring and ``kipc.Queue`` have their own N x M and crash campaigns in test_ring*.py / test_queues.py.)
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kipc
from kipc import testing

from ..helpers import REPO

ROOT = REPO

# -------------------------------------------------------------------------- Ctrl-C
# The child sets up a blocking call, prints READY, blocks; SIGINT must raise KeyboardInterrupt.
CTRL_C = r"""
import signal, sys, time, kipc
from kipc import testing, signals
case, arg = sys.argv[1], sys.argv[2]
what, _, scheme = case.partition(":")

def blocked(call):
    print("READY", flush=True)
    try:
        call()
        print("RETURNED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", time.monotonic(), flush=True)

if what == "send":
    with testing.channel_pair(scheme) as (tx, rx):
        msg = b"x" * 1024
        n = 0
        while True:  # fill it: a non-blocking send says when it is full
            try:
                tx.send(msg, timeout=0)
                n += 1
            except kipc.WouldBlock:
                break
        def send_until_blocked():
            # a stream accepts a message once its first byte is in (the rest is flushed before the
            # next one), so the first blocking send may return: the next one blocks for sure
            while True:
                tx.send(msg)
        blocked(send_until_blocked)
elif what == "accept":
    with kipc.listen(arg) as lst:
        blocked(lst.accept)
elif what == "acquire":
    sem = kipc.Semaphore(arg, create=True, value=0)
    try:
        blocked(sem.acquire)
    finally:
        sem.close()
elif what == "signals":
    with signals.Receiver(signal.SIGRTMIN) as r:
        blocked(r.recv)
"""

SEND_FULL = ["pipe", "fifo", "unix", "tcp", "sysvmq", "posixmq", "ring"]
CASES = [f"send:{s}" for s in SEND_FULL] + ["accept:unix", "accept:tcp", "acquire:sysv", "acquire:posix",
                                             "signals:recv"]


def _arg(case: str) -> str:
    if case == "accept:unix":
        return f"unix://{testing.unique_name('l')}"
    if case == "accept:tcp":
        return "tcp://127.0.0.1:0"
    if case == "acquire:sysv":
        return f"sysv://{testing.unique_key()}"
    if case == "acquire:posix":
        return f"posix://{testing.unique_name('s')}"
    return "-"


@pytest.mark.parametrize("case", CASES)
def test_ctrl_c_interrupts_every_blocking_call(case: str, figures: Any) -> None:
    """Ctrl-C during a blocking send (full), accept, acquire or signal recv raises KeyboardInterrupt promptly"""
    with testing.spawn(CTRL_C, case, _arg(case), timeout=30) as child:
        time.sleep(0.05)  # let it enter the blocking wait
        sent = time.monotonic()
        child.proc.send_signal(signal.SIGINT)
        line = child.readline(timeout=5)
        assert line.startswith("INTERRUPTED"), line
        latency = float(line.split()[1]) - sent
        child.check(timeout=10)
    what, _, mech = case.partition(":")
    label = {"send": "send on a full channel", "accept": "Listener.accept", "acquire": "Semaphore.acquire",
             "signals": "signals.Receiver.recv"}[what]
    figures.record(mech if what != "signals" else "signals", f"Ctrl-C during {label}: KeyboardInterrupt (ms)",
                   f"{latency * 1000:.1f}", target="< 100")
    assert latency < 0.5, f"{case}: KeyboardInterrupt after {latency * 1000:.0f} ms"


# -------------------------------------------------------------------------- N x M stress
# One launcher child forks the producers and consumers (real processes; fork is cheap on a
# loaded 2-core box). Every payload carries (producer, seq, length, crc32, ~seq, ~producer).
# Consumers check each message, count per-producer reorders, and write the (producer, seq)
# pairs they got to a file; the test counts lost and duplicated messages from those files.
LAUNCHER = r"""
import json, os, random, sys, time
from array import array
sys.path.insert(0, sys.argv[1])
import kipc
from tests.helpers import check, payload
url, n_prod, n_cons, per_prod, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
opts = json.loads(sys.argv[7])
STOP = b"STOP"

def produce(p):
    ch = kipc.open(url, **opts)
    rnd = random.Random(p)
    for s in range(per_prod):
        ch.send(payload(p, s, rnd.randint(32, 256), redundant=True), timeout=60)
    ch.close()
    return {}

def consume(c):
    ch = kipc.open(url, **opts)
    last = [-1] * n_prod
    got = array("I")
    reorder = corrupt = 0
    while True:
        data = ch.recv(timeout=60)
        if data == STOP:
            break
        try:
            p, s = check(data, redundant=True)
        except (AssertionError, Exception):
            corrupt += 1
            continue
        if s <= last[p]:
            reorder += 1
        last[p] = s
        got.append(p)
        got.append(s)
    ch.close()
    with open(f"{out}/c{c}.bin", "wb") as f:
        got.tofile(f)
    return {"reorder": reorder, "corrupt": corrupt}

def fork(fn, i, tag):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            res = fn(i)
        except BaseException as e:
            res = {"error": f"{tag}{i}: {type(e).__name__}: {e}"}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    return pid, r

def collect(pid, r):
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data or b'{"error": "worker died"}')

print("READY", flush=True)
t0 = time.monotonic()
consumers = [fork(consume, c, "consumer") for c in range(n_cons)]
producers = [fork(produce, p, "producer") for p in range(n_prod)]
results = [collect(*w) for w in producers]
ch = kipc.open(url, **opts)
for _ in range(n_cons):  # after every data message: FIFO delivers the stops last
    ch.send(STOP, timeout=60)
results += [collect(*w) for w in consumers]
elapsed = time.monotonic() - t0
ch.close()
print("RESULT", json.dumps({"elapsed": elapsed, "workers": results}), flush=True)
"""

CONFIGS = [(1, 1), (4, 4), (8, 8)]
# scheme -> (create options, per-handle options, full messages per config)
SCHEMES: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "sysvmq": ({}, {}, 300_000),
    "posixmq": ({}, {}, 300_000),
    # fsync=False: the stress counts delivery, not durability (fsync per message costs ms on this disk)
    "file": ({}, {"fsync": False}, 30_000),
}


def _url(scheme: str) -> str:
    return f"sysvmq://{testing.unique_key()}" if scheme == "sysvmq" else f"{scheme}://{testing.unique_name('x')}"


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{n}x{m}" for n, m in CONFIGS])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_many_producers_many_consumers(scheme: str, config: tuple[int, int], scale: Any, figures: Any,
                                       tmp_path: Path) -> None:
    """N x M producers x consumers (real processes): lost 0, duplicated 0, per-producer reorder 0, corrupt 0"""
    n_prod, n_cons = config
    create_opts, opts, full = SCHEMES[scheme]
    total = scale.n(2_000, full)
    per_prod = total // n_prod
    total = per_prod * n_prod
    url = _url(scheme)
    with kipc.open(url, create=True, **create_opts, **opts):  # the test owns (and removes) the object
        with testing.spawn(LAUNCHER, ROOT, url, str(n_prod), str(n_cons), str(per_prod), str(tmp_path),
                           json.dumps(opts)) as child:
            line = child.expect("RESULT", timeout=scale.n(120, 1800))
            child.check(timeout=60)
    res = json.loads(line.split(" ", 1)[1])
    errors = [w["error"] for w in res["workers"] if "error" in w]
    assert not errors, errors
    reorder = sum(w.get("reorder", 0) for w in res["workers"])
    corrupt = sum(w.get("corrupt", 0) for w in res["workers"])
    counts = np.zeros((n_prod, per_prod), dtype=np.int64)
    for c in range(n_cons):
        pairs = np.fromfile(tmp_path / f"c{c}.bin", dtype=np.uint32).reshape(-1, 2).astype(np.int64)
        assert (pairs[:, 0] < n_prod).all() and (pairs[:, 1] < per_prod).all(), "a producer id or seq out of range"
        np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
    lost = int((counts == 0).sum())
    dup = int(np.clip(counts - 1, 0, None).sum())
    rate = total / res["elapsed"]
    figures.record(scheme, f"{n_prod}x{n_cons}, {total} msgs (32-256 B): lost / dup / reorder / corrupt",
                   f"{lost} / {dup} / {reorder} / {corrupt}", target="0 / 0 / 0 / 0")
    figures.record(scheme, f"{n_prod}x{n_cons}: msgs/s (all producers, incl. fork + checks)", f"{rate:,.0f}")
    assert (lost, dup, reorder, corrupt) == (0, 0, 0, 0)
