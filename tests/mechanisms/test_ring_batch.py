"""ring:// batches: ``send_many(iterable)`` and ``recv_many(max_n, timeout=)``.

Same guarantees as single calls: FIFO per producer, whole messages exactly once (also
fragmented ones), one deadline for the batch; ``recv_many`` returns at least one message
unless it times out; an error in ``send_many`` says how many were sent (``.sent``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from kipc import testing
from kipc.errors import Timeout, WouldBlock
from kipc.transports.ring import RingChannel

from ..helpers import REPO, check

PRODUCER = r"""
import sys
sys.path.insert(0, sys.argv[3])
from tests.helpers import payload
from kipc.transports.ring import RingChannel
ch = RingChannel(sys.argv[1])
me, n = int(sys.argv[2]), 3000
sizes = [8 + (i * 37) % 300 for i in range(n)]
sizes[::500] = [9000] * len(sizes[::500])  # some fragmented ones (capacity 16 KiB)
seq = 0
while seq < n:
    batch = [payload(me, s, max(sizes[s], 20)) for s in range(seq, min(n, seq + 64))]
    assert ch.send_many(batch, timeout=30) == len(batch)
    seq += len(batch)
"""


@pytest.fixture
def ring() -> Iterator[Callable[..., RingChannel]]:
    made: list[RingChannel] = []

    def make(**kw: object) -> RingChannel:
        ch = RingChannel(testing.unique_name("batch"), create=True, **kw)  # type: ignore[arg-type]
        made.append(ch)
        return ch

    yield make
    for ch in made:
        ch.close()


def test_two_processes_batch_into_one_batch_reader(ring: Callable[..., RingChannel]) -> None:
    rx = ring(capacity=16 << 10)
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, rx.name, str(p), REPO]) for p in (1, 2)]
    try:
        nxt = {1: 0, 2: 0}
        sizes = set()
        while sum(nxt.values()) < 6000:
            got = rx.recv_many(100, timeout=30)
            assert 1 <= len(got) <= 100
            sizes.add(len(got))
            for m in got:
                p, s = check(m)
                assert s == nxt[p], f"producer {p}: expected {nxt[p]}, got {s}"
                nxt[p] += 1
        with pytest.raises(WouldBlock):
            rx.recv_many(10, timeout=0)
    finally:
        for pr in procs:
            assert pr.wait(timeout=60) == 0


def test_batch_deadline_and_sent_count(ring: Callable[..., RingChannel]) -> None:
    ch = ring(capacity=4096)
    with pytest.raises(Timeout) as ei:
        ch.send_many([b"x" * 1000] * 10, timeout=0.2)
    assert ei.value.sent == 4  # type: ignore[attr-defined]  # 4 records of 1016 bytes fill 4 KiB
    assert ch.recv_many(3) == [b"x" * 1000] * 3
    assert ch.recv_many(50, timeout=1) == [b"x" * 1000]
    with pytest.raises(Timeout):
        ch.recv_many(5, timeout=0.05)


def test_batches_use_the_codec(ring: Callable[..., RingChannel]) -> None:
    ch = ring(codec="pickle")
    objs = [{"i": i} for i in range(20)] + [list(range(5))]
    assert ch.send_many(iter(objs)) == 21
    assert ch.recv_many(100, timeout=1) == objs
