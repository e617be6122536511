"""``Ring.recv_into(alloc, deadline, view)``: a fragmented message reassembled into the caller's block.

The contract (``_ring.pyi``): ``alloc(total)`` is called once per fragmented message, under
the consumer lock, and must give a writable buffer of exactly ``total`` bytes; that object
is what recv_into returns (a memoryview of it with ``view``). A single-record message comes
back as ``recv`` gives it, without calling ``alloc``. A failing or wrong-sized allocator
loses nothing; a timeout mid-message keeps the block and the next call resumes into it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from kipc import testing
from kipc._base import Deadline
from kipc.errors import Timeout
from kipc.transports.ring import RingChannel

CAP = 64 << 10  # frag_max is about half of it: messages above ~32 KiB are fragmented


@pytest.fixture
def pair() -> Iterator[tuple[RingChannel, RingChannel]]:
    name = testing.unique_name("rinto")
    prod = RingChannel(name, create=True, capacity=CAP)
    cons = RingChannel(name)
    yield prod, cons
    cons.close()
    prod.close()


def _counting() -> tuple[Callable[[int], bytearray], list[bytearray]]:
    made: list[bytearray] = []

    def alloc(n: int) -> bytearray:
        b = bytearray(n)
        made.append(b)
        return b

    return alloc, made


def test_fragmented_message_lands_in_the_callers_block(pair: tuple[RingChannel, RingChannel]) -> None:
    prod, cons = pair
    ring = cons._ring
    msg = bytes(range(256)) * 1000  # 256,000 bytes: many fragments through a 64 KiB ring
    alloc, made = _counting()
    assert len(msg) > ring.frag_max
    t = threading.Thread(target=prod.send, args=(msg,), kwargs={"timeout": 10})
    t.start()
    got = ring.recv_into(alloc, Deadline(10))
    t.join()
    assert len(made) == 1 and got is made[0]  # the allocator's object itself, filled
    assert bytes(got) == msg


def test_view_gives_a_writable_memoryview_of_the_block(pair: tuple[RingChannel, RingChannel]) -> None:
    prod, cons = pair
    msg = b"\x07" * 200_000
    alloc, made = _counting()
    t = threading.Thread(target=prod.send, args=(msg,), kwargs={"timeout": 10})
    t.start()
    got = cons._ring.recv_into(alloc, Deadline(10), 2)
    t.join()
    assert isinstance(got, memoryview) and not got.readonly and got.obj is made[0]
    assert got.tobytes() == msg
    got[0] = 1  # writable: the block is the caller's
    assert made[0][0] == 1


def test_single_record_messages_do_not_call_the_allocator(pair: tuple[RingChannel, RingChannel]) -> None:
    prod, cons = pair
    alloc, made = _counting()
    prod.send(b"small")
    prod.send(b"y" * 20_000)  # one record, >= the view threshold
    assert cons._ring.recv_into(alloc, Deadline(1)) == b"small"
    v = cons._ring.recv_into(alloc, Deadline(1), 2)
    assert isinstance(v, memoryview) and v.readonly  # a view into the ring, as recv(view=2)
    assert bytes(v) == b"y" * 20_000
    v.release()
    assert made == []


@pytest.mark.parametrize("bad", ["short", "raises", "readonly"])
def test_a_bad_allocator_loses_nothing(pair: tuple[RingChannel, RingChannel], bad: str) -> None:
    prod, cons = pair
    msg = b"\x05" * 50_000  # fragmented, fits the ring whole

    def alloc(n: int) -> object:
        if bad == "short":
            return bytearray(n - 1)
        if bad == "raises":
            raise MemoryError("no block")
        return bytes(n)

    prod.send(msg, timeout=1)
    err = {"short": ValueError, "raises": MemoryError, "readonly": BufferError}[bad]
    with pytest.raises(err):
        cons._ring.recv_into(alloc, Deadline(1))
    assert cons.recv(timeout=1) == msg  # still there, whole


def test_bad_arguments_raise_before_receiving(pair: tuple[RingChannel, RingChannel]) -> None:
    prod, cons = pair
    prod.send(b"kept")
    with pytest.raises(TypeError):
        cons._ring.recv_into(None, Deadline(1))
    with pytest.raises(TypeError):
        cons._ring.recv_into()
    assert cons.recv(timeout=1) == b"kept"


def test_a_timeout_mid_message_resumes_into_the_same_block(pair: tuple[RingChannel, RingChannel]) -> None:
    prod, cons = pair
    msg = bytes(range(251)) * 1000  # 251,000 bytes: about four ring capacities
    alloc, made = _counting()
    pr = prod._ring
    assert not pr.try_send(msg)  # writes what fits, keeps the rest (a producer claim)
    with pytest.raises(Timeout):
        cons._ring.recv_into(alloc, Deadline(0.05))  # takes what is there, then times out mid-message
    assert len(made) == 1
    got = None
    for _ in range(1000):  # alternate: the producer resumes, the consumer resumes
        if pr.try_send(msg):
            break
        try:
            got = cons._ring.recv_into(alloc, Deadline(0.01))
        except Timeout:
            continue
    if got is None:
        got = cons._ring.recv_into(alloc, Deadline(5))
    assert len(made) == 1 and got is made[0]  # one block, resumed, never restarted
    assert bytes(got) == msg
