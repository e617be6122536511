"""ring:// zero-copy calls that must not lose data (issue 11 items 12 and 13), with real processes.

* ``recv_array()`` on a message that is not an array (plain, shorter than the array
  header, a forged header, fragmented) raises ``ProtocolError`` naming what arrived,
  and the message stays in the ring: the next ``recv()`` gets it whole.
* ``loan()`` with numpy views alive at the end of the ``with`` block publishes the
  frame; an exception aborts it; in neither case is the ring left wedged for the
  producers of other processes.
* ``loan_array(shape, dtype)`` fills an array in place (16-byte aligned); ``recv_array``
  receives it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from kipc import testing
from kipc.errors import ProtocolError
from kipc.transports.ring import RingChannel

from ..conftest import Figures

np = pytest.importorskip("numpy")
HOSTILE = "Hostile peers and odd objects"  # the docs/reliability.md section (tests/reliability/test_hostile.py)


@pytest.fixture
def ring() -> Iterator[Callable[..., RingChannel]]:
    made: list[RingChannel] = []

    def make(**kw: object) -> RingChannel:
        ch = RingChannel(testing.unique_name("zc"), create=True, **kw)  # type: ignore[arg-type]
        made.append(ch)
        return ch

    yield make
    for ch in made:
        ch.close()


def _child(code: str, *args: str, timeout: float = 30.0) -> str:
    """Run `code` in a fresh interpreter (a real peer process); return its stdout."""
    prelude = "import sys, numpy as np\nfrom kipc.transports.ring import RingChannel\nch = RingChannel(sys.argv[1])\n"
    p = subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


@pytest.mark.parametrize("message", [b"plain text", b"", b"KN", b"KND2" + bytes(3),
                                     b"KND2\x02<f" + bytes(13) + b"\x01" + (5).to_bytes(8, "little"),
                                     b"KNDA\x03<f8" + bytes(12) + b"\x09" + bytes(40)])
def test_recv_array_on_a_non_array_leaves_the_message(ring: Callable[..., RingChannel], message: bytes,
                                                      figures: Figures) -> None:
    """recv_array() on a message that is not an array (from another process): ProtocolError, message kept"""
    rx = ring(capacity=64 << 10)
    _child("ch.send(bytes.fromhex(sys.argv[2])); ch.send(b'next')", rx.name, message.hex())
    with pytest.raises(ProtocolError, match="stays in the ring") as ei:
        rx.recv_array(timeout=5)
    assert "bytes" in str(ei.value) or "byte message" in str(ei.value)
    assert rx.recv(timeout=5) == message  # still there, whole
    assert rx.recv(timeout=5) == b"next"
    figures.record("ring", f"{len(message)}-byte message starting {message[:6]!r}: error / then recv() returns it",
                   "ProtocolError / yes", target="a KipcError / yes", section=HOSTILE)


def test_recv_array_on_a_fragmented_plain_message_leaves_it(ring: Callable[..., RingChannel]) -> None:
    rx = ring(capacity=8 << 10)
    big = bytes(range(256)) * 100  # 25600 bytes > frag_max: fragments
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys\nfrom kipc.transports.ring import RingChannel\n"
                             "ch = RingChannel(sys.argv[1]); ch.send(bytes(range(256)) * 100, timeout=20)",
                             rx.name])
    try:
        with pytest.raises(ProtocolError, match="25600-byte message"):
            rx.recv_array(timeout=5)
        assert rx.recv(timeout=10) == big
    finally:
        assert proc.wait(timeout=20) == 0


def test_loan_with_a_live_numpy_view_publishes_and_never_wedges(ring: Callable[..., RingChannel],
                                                                figures: Figures) -> None:
    """loan() with a numpy view alive at the end of the block, then one that raises, in another process"""
    rx = ring(capacity=64 << 10)
    out = _child(
        "with ch.loan(64) as buf:\n"
        "    a = np.frombuffer(buf, dtype=np.uint32)\n"
        "    a[:] = np.arange(16, dtype=np.uint32)\n"
        "assert a.base is not None  # still alive after the block\n"
        "try:\n"
        "    with ch.loan(64) as buf:\n"
        "        b = np.frombuffer(buf, dtype=np.uint8)\n"
        "        b[:] = 7\n"
        "        raise KeyError('abort')\n"
        "except KeyError:\n"
        "    pass\n"
        "print('done')\n", rx.name)
    assert "done" in out
    # another process's producer is not blocked by either loan
    _child("ch.send(b'after', timeout=2)", rx.name)
    got = rx.recv(timeout=5)
    assert np.array_equal(np.frombuffer(got, dtype=np.uint32), np.arange(16, dtype=np.uint32))
    assert rx.recv(timeout=5) == b"after"  # the aborted loan published nothing
    assert rx.qsize() == 0
    figures.record("ring", "frame published with the view alive / aborted loan published / "
                   "another process's send(timeout=2) after both", "yes / no / sent",
                   target="yes / no / sent", section=HOSTILE)


def test_loan_array_fills_in_place_and_recv_array_gets_it(ring: Callable[..., RingChannel]) -> None:
    rx = ring(capacity=1 << 20)
    _child(
        "with ch.loan_array((48, 64), np.float64) as a:\n"
        "    assert a.ctypes.data % 16 == 0 and a.flags.writeable\n"
        "    a[:] = np.arange(48 * 64).reshape(48, 64)\n"
        "try:\n"
        "    with ch.loan_array(8, 'u1') as a:\n"
        "        raise RuntimeError('nothing published')\n"
        "except RuntimeError:\n"
        "    pass\n"
        "with ch.loan_array((), '>i4') as a:\n"
        "    a[...] = -5\n"
        "ch.send_array(np.arange(6, dtype=np.int16).reshape(2, 3))\n", rx.name)
    a = rx.recv_array(timeout=5)
    assert a.shape == (48, 64) and a.dtype == np.float64 and np.array_equal(a, np.arange(48 * 64).reshape(48, 64))
    s = rx.recv_array(timeout=5)
    assert s.shape == () and s.dtype == np.dtype(">i4") and int(s) == -5
    v = rx.recv_array(timeout=5, copy=False)
    assert v.ctypes.data % 16 == 0 and np.array_equal(v, np.arange(6).reshape(2, 3))
    del v
    assert rx.qsize() == 0


def test_recv_array_still_reads_the_unpadded_v1_format(ring: Callable[..., RingChannel]) -> None:
    import struct

    rx = ring(capacity=64 << 10)
    arr = np.arange(6, dtype="<i4").reshape(3, 2)
    head = struct.pack("<4sB15sB", b"KNDA", 3, b"<i4", 2) + struct.pack("<2Q", 3, 2)
    rx.send(head + arr.tobytes())
    assert np.array_equal(rx.recv_array(timeout=5), arr)
