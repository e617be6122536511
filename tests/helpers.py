"""Payloads that detect corruption: every message carries (producer, seq, length, crc32).

``redundant=True`` adds a second, bit-inverted copy of (seq, producer) after the
header (LMAX Disruptor style), so a torn or mixed-up header is caught too.
"""

from __future__ import annotations

import functools
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable

#: the repository root (children put it on sys.path to import ``tests.helpers``) and this folder
TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)

_HDR = struct.Struct("<IQII")  # producer, seq, length, crc32 of the filler
_HDR_R = struct.Struct("<IQIIQI")  # the same + ~seq (64 bit), ~producer (32 bit)
_M64, _M32 = 2**64 - 1, 2**32 - 1


@functools.lru_cache(maxsize=4096)
def _filler(start: int, n: int) -> bytes:
    return bytes((start + i) & 0xFF for i in range(n))


def payload(producer: int, seq: int, size: int, *, redundant: bool = False) -> bytes:
    """A message of exactly ``size`` bytes (>= 20, or >= 32 with ``redundant``) naming its producer and seq."""
    hdr = _HDR_R if redundant else _HDR
    if size < hdr.size:
        if redundant:
            raise ValueError(f"a redundant payload needs >= {hdr.size} bytes, not {size}")
        return bytes((seq + i) & 0xFF for i in range(size))
    filler = _filler((seq * 7) & 0xFF, min(size - hdr.size, 256))
    body = (filler * ((size - hdr.size) // max(1, len(filler)) + 1))[: size - hdr.size]
    if redundant:
        return hdr.pack(producer, seq, size, zlib.crc32(body), ~seq & _M64, ~producer & _M32) + body
    return hdr.pack(producer, seq, size, zlib.crc32(body)) + body


def check(data: bytes, producer: int | None = None, seq: int | None = None, *,
          redundant: bool = False) -> tuple[int, int]:
    """Verify a payload from :func:`payload`; return (producer, seq)."""
    hdr = _HDR_R if redundant else _HDR
    if redundant:
        p, s, n, crc, not_s, not_p = hdr.unpack_from(data)
        assert not_s == ~s & _M64 and not_p == ~p & _M32, f"redundant field mismatch in message {p}/{s}"
    else:
        p, s, n, crc = hdr.unpack_from(data)
    assert n == len(data), f"length field {n} != {len(data)}"
    assert zlib.crc32(data[hdr.size :]) == crc, f"crc mismatch in message {p}/{s}"
    if producer is not None:
        assert p == producer
    if seq is not None:
        assert s == seq, f"expected seq {seq}, got {s}"
    return p, s


def fork_child(body: Callable[[], object]) -> int:
    """Run ``body`` in a forked child that always leaves through os._exit (0 = success)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_pid(pid: int, timeout: float = 30.0) -> int:
    """Exit code of child ``pid``; SIGKILL it and fail if it runs past ``timeout`` (a hang)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} still running after {timeout} s (a hang)")


def p99(xs: list[float]) -> float:
    """The 99th percentile of ``xs`` (0.0 for none)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else 0.0


def read_reported(rfd: int) -> list[int]:
    """The sequence numbers (8-byte little-endian) a child wrote to the pipe ``rfd`` before it died; closes ``rfd``."""
    reported = b""
    while chunk := os.read(rfd, 65536):
        reported += chunk
    os.close(rfd)
    return [int.from_bytes(reported[i:i + 8], "little") for i in range(0, len(reported), 8)]


def take_rest_after_consumer_kill(take: Callable[[float], bytes], empty: type[BaseException], first: int,
                                  got: list[int], seq: int,
                                  recover: list[float] | None = None) -> tuple[list[int], int]:
    """After SIGKILLing a consumer that reported ``got`` (starting at ``first``) of ``seq`` committed items:
    take the rest (``take(timeout)`` raises ``empty`` when there is none) and check nothing was lost.

    The first take repairs the lock a dead consumer may have held; its duration goes to ``recover``.
    Returns ``(rest, missing)``: ``missing`` is 0 or 1, the item the dead consumer had claimed.
    """
    assert got == list(range(first, first + len(got))), "the dead consumer saw a gap or a reordering"
    rest: list[int] = []
    t0 = time.monotonic()
    try:
        rest.append(check(take(0), 0)[1])
    except empty:
        pass
    if recover is not None:
        recover.append(time.monotonic() - t0)
    while True:
        try:
            rest.append(check(take(0.02), 0)[1])
        except empty:
            break
    nxt = first + len(got)
    assert rest == list(range(rest[0], seq)) if rest else True, "items after the claimed one were lost"
    missing = (rest[0] if rest else seq) - nxt
    assert 0 <= missing <= 1, f"{missing} committed items lost (only the claimed one may go)"
    return rest, missing


def build_c(directory: str, source: str, name: str = "prog", *libs: str) -> str:
    """Compile one C program (gcc, as on every machine here) into ``directory``; returns the executable."""
    import subprocess

    src, exe = os.path.join(directory, f"{name}.c"), os.path.join(directory, name)
    with open(src, "w") as f:
        f.write(source)
    subprocess.run(["gcc", "-O1", "-Wall", "-o", exe, src, *libs], check=True, timeout=60)
    return exe


def assert_quiet_exit(err: str, unclosed_creators: int = 0) -> None:
    """A child's stderr at exit: nothing but the designed ResourceWarning of each creator it left
    unclosed ("the object stays until kipc gc or kipc rm"), which must be there, once each."""
    stays = [ln for ln in err.splitlines() if "ResourceWarning: unclosed <" in ln and "the object stays" in ln]
    assert len(stays) == unclosed_creators, err
    rest = "\n".join(ln for ln in err.splitlines() if ln not in stays)
    for bad in ("Warning", "never awaited", "Traceback", "Task was destroyed"):
        assert bad not in rest, err
