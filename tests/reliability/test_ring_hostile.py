"""ring:// against a hostile same-uid peer: garbage in every header field and in the records.

The test is the hostile peer: it maps ``/dev/shm/kipc.ring.NAME`` with ``mmap`` and
writes garbage between operations. Every call must return, or raise ``BadObject``
(a corrupt ring is marked broken for every peer) or ``Timeout``, within its deadline;
none may crash the process, spin past its deadline, or ignore Ctrl-C. Each scenario
runs in a ``python -c`` child so that a crash shows up as a failed row, not a dead run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kipc import testing
from kipc.transports.ring import _ring

from ..conftest import Figures
from .test_hostile import HOSTILE

LAYOUT = _ring.LAYOUT
U64 = (1 << 64) - 1

# Garbage per field: every header word a peer can rewrite, with values chosen to hit the
# range checks (unaligned, beyond capacity, near the end of the data area, all ones).
GARBAGE: dict[str, list[int]] = {
    "tail": [U64, 1 << 40, 4096 - 8, 4096 * 3 + 8, 7],
    "head": [U64, 1 << 40, 4096 - 8, 8, 3],
    "msgs_in": [U64, 0],
    "msgs_out": [U64, 1 << 63],
    "closed": [7, U64 & 0xFFFFFFFF],
    "frag_active": [1, 0xFFFFFFFF],
    "cons_waiters": [0xFFFFFFFF],
    "prod_waiters": [0xFFFFFFFF],
    "pj_valid": [1],
    "pj_tail": [U64],
    "cj_valid": [1],
    "cj_head": [U64],
    "claim": [U64, 1],
    "claim_pid": [0xFFFFFFFF, 1],
    "claim_start": [U64],
    "pclaim": [U64, 1],
    "pclaim_pid": [0xFFFFFFFF, 1],
    "pclaim_beat": [U64],
    "unfinished": [0xFFFFFFFF],
    "prod_lock": [U64, 0x5A5A5A5A5A5A5A5A],
    "cons_lock": [U64, 0x5A5A5A5A5A5A5A5A],
    "magic": [0],
    "capacity": [U64],
}

# The child: create a ring of 4 KiB, move some traffic (head and tail away from 0, a pad
# record), scribble, then run every operation with a deadline and report what happened.
CHILD = r"""
import json, mmap, os, sys, time
import kipc
from kipc.errors import BadObject, ChannelClosed, DeadlineExceeded
from kipc.transports.ring import RingChannel, _ring
spec = json.loads(sys.argv[1])
L = _ring.LAYOUT
out = []
for case in spec["cases"]:
    ch = RingChannel(case["name"], create=True, capacity=4096)
    peer = RingChannel(case["name"])
    for i in range(7):
        ch.send(bytes(300) + bytes([i]))
        ch.recv()
    ch.send(b"pending message")
    fd = os.open(ch.path, os.O_RDWR)
    m = mmap.mmap(fd, 4096 + 4096)
    os.close(fd)
    def poke(field, value):
        off, size = L[field] if field in L else (None, None)
        if field == "record":
            head = int.from_bytes(m[L["head"][0]:L["head"][0] + 8], "little") % 4096
            m[4096 + head:4096 + head + 16] = value.to_bytes(16, "little")
        else:
            width = min(size, 8)
            for k in range(0, size, width):
                m[off + k:off + k + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    poke(case["field"], case["value"])
    rows = []
    ops = [
        ("send", lambda: ch.send(b"y" * 64, timeout=0.3)),
        ("send-big", lambda: ch.send(b"z" * 5000, timeout=0.3)),
        ("recv", lambda: ch.recv(timeout=0.3)),
        ("recv-peer", lambda: peer.recv(timeout=0.3)),
        ("recv-view", lambda: ch.recv(timeout=0.3, view=True).release()),
        ("try-recv", lambda: ch.recv(timeout=0)),
        ("loan", lambda: ch.loan(16, timeout=0.3).__enter__()),
        ("qsize", lambda: ch.qsize()),
        ("info", lambda: ch.info()),
        ("peer-send", lambda: peer.send(b"p", timeout=0.3)),
        ("peer-recv", lambda: peer.recv(timeout=0.3)),
    ]
    for name, op in ops:
        t0 = time.monotonic()
        try:
            op()
            res = "ok"
        except (BadObject, DeadlineExceeded, ChannelClosed) as e:
            res = type(e).__name__ + ": " + str(e)[:160]
        except Exception as e:
            res = "UNEXPECTED " + type(e).__name__ + ": " + str(e)[:160]
        rows.append([name, res, round(time.monotonic() - t0, 3)])
    out.append({"field": case["field"], "value": case["value"], "rows": rows})
    m.close()
    peer.close()
    ch.close()
print(json.dumps(out))
"""


def _run(cases: list[dict[str, object]], timeout: float = 120.0) -> list[dict[str, object]]:
    env = dict(os.environ)  # the child imports kipc as we do (editable install, or make sanitize's PYTHONPATH)
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"cases": cases})], capture_output=True,
                       text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"child died with {p.returncode}: {p.stderr[-2000:]}"
    return list(json.loads(p.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("field", [*sorted(GARBAGE), "record"])
def test_garbage_in_every_field_raises_or_returns_on_time(field: str, figures: Figures) -> None:
    """A same-uid peer writes garbage into a ring header field or the record at head between calls"""
    values = GARBAGE.get(field) or [
        (0xFFFFFFFF) | (0x7 << 32),                       # huge len, flags 7
        (4000) | (1 << 32),                               # FIRST, len past the end
        (16) | (4 << 32),                                 # PAD that does not reach the end
        (300) | (1 << 32) | (U64 << 64),                  # FIRST with an absurd total
        (8) | (0x80 << 32),                               # unknown flag
        (12) | (3 << 32) | (99 << 64),                    # whole message whose total != len
    ]
    cases = [{"name": testing.unique_name("hostile"), "field": field, "value": v} for v in values]
    calls = bad = slowest = 0.0
    for case in _run(cases):
        for op, res, secs in case["rows"]:  # type: ignore[attr-defined]
            where = f"{field}={case['value']:#x} {op}"
            assert not res.startswith("UNEXPECTED"), f"{where}: {res}"
            assert "%" not in res, f"{where}: unformatted message {res}"
            assert secs < 2.0, f"{where}: took {secs} s past a 0.3 s deadline"
            calls += 1
            bad += res.startswith("BadObject")
            slowest = max(slowest, secs)
    figures.record("ring", f"`{field}`: {len(values)} garbage values x 11 calls (2 handles): crashed / other errors "
                   "/ BadObject / slowest call (deadline 0.3 s)",
                   f"0 / 0 / {int(bad)} of {int(calls)} / {slowest:.2f} s", target="0 / 0 / - / < 2 s",
                   section=HOSTILE)


def test_corrupt_ring_is_marked_broken_for_every_peer() -> None:
    cases = [{"name": testing.unique_name("hostile"), "field": "tail", "value": 4096 - 8}]
    rows = dict((op, res) for op, res, _ in _run(cases)[0]["rows"])  # type: ignore[misc]
    assert rows["send"].startswith("BadObject") and "corrupt shared memory" in rows["send"], rows
    # the other handle had read nothing corrupt itself: it learns from the mark in the header
    assert rows["peer-send"].startswith("BadObject") and "marked broken" in rows["peer-send"], rows


def test_huge_tail_recv_raises_at_once() -> None:
    """Seen on main: a huge tail made recv() skip records forever holding the GIL."""
    cases = [{"name": testing.unique_name("hostile"), "field": "tail", "value": 1 << 40}]
    rows = {op: (res, secs) for op, res, secs in _run(cases)[0]["rows"]}  # type: ignore[misc]
    res, secs = rows["recv"]
    assert res.startswith("BadObject"), res
    assert secs < 0.3


def test_garbage_mutex_is_bad_object_not_oserror() -> None:
    cases = [{"name": testing.unique_name("hostile"), "field": "prod_lock", "value": U64}]
    rows = {op: res for op, res, _ in _run(cases)[0]["rows"]}  # type: ignore[misc]
    assert rows["send"].startswith("BadObject") and "lock" in rows["send"], rows


BLOCKED = r"""
import mmap, os, sys
from kipc.transports.ring import RingChannel, _ring
ch = RingChannel(sys.argv[1], create=True, capacity=4096)
fd = os.open(ch.path, os.O_RDWR)
m = mmap.mmap(fd, 8192)
L = _ring.LAYOUT
# a claim by a live process (our parent) on an empty ring: consumers wait for it to end
m[L["claim_pid"][0]:L["claim_pid"][0] + 4] = os.getppid().to_bytes(4, "little")
m[L["claim"][0]:L["claim"][0] + 8] = ((os.getppid() << 32) | 1).to_bytes(8, "little")
ch.send(b"behind a claim")
print("READY", flush=True)
try:
    ch.recv()
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
ch.close()
"""


def test_wait_behind_a_hostile_claim_hears_ctrl_c(figures: Figures) -> None:
    """A consumer waiting (no timeout) behind a forged claim naming a live process hears Ctrl-C"""
    env = dict(os.environ)  # the child imports kipc as we do (editable install, or make sanitize's PYTHONPATH)
    p = subprocess.Popen([sys.executable, "-c", BLOCKED, testing.unique_name("hostile")], stdout=subprocess.PIPE,
                         text=True, env=env)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, _ = p.communicate(timeout=5)
        assert "INTERRUPTED" in out
        figures.record("ring", "SIGINT to a recv() without timeout behind a forged live claim: KeyboardInterrupt after",
                       f"{time.monotonic() - t0:.2f} s", target="< 1 s", section=HOSTILE)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
