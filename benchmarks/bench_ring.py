"""ring:// and kipc.Queue against the IPC a Python user would pick instead, between two real processes.

Contenders: ``ring`` (RingChannel, bytes), ``ring-view`` (consumer uses
``recv(view=True)``; arrays via ``recv_array(copy=False)``), ``kipc.Queue``,
``mp.Queue``, ``mp.Pipe``, ``os.pipe`` (length-prefixed), ``posix_ipc`` and
``sysv_ipc`` message queues (capped by the kernel's message size: bigger
sizes are reported as errors), plus faster-fifo and pyzmq when importable.

Patterns, each in a fresh forked child:

* 64 B round trip: parent sends, child echoes on a second channel; median
  and p99 of per-message times.
* stream: N messages one way, then one acknowledgement: msg/s and MB/s
  (10^6 B/s) at 64 B, 4 KiB, 64 KiB, 1 MiB and numpy 1920x1080x3 uint8 frames.
* ``ring-batch``: the 64 B stream with ``send_many`` / ``recv_many`` (batches of 256).
* ``memcpy``: single-thread copy bandwidth of 1 MiB buffers in this process, the
  ceiling of the 1 MiB stream rows (target: ring >= 0.8x of it in the same run).

Each measurement is repeated (``--repeat``, default 3); rows carry the best
and the median of the repeats, and the CPU steal time during the run (from
/proc/stat): the machine is shared, prefer runs with low steal. Ratios are
against the best peer of the same run.

    .venv/bin/python benchmarks/bench_ring.py [--quick] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import kipc
from kipc.transports.ring import RingChannel

MiB = 1 << 20
FRAME_SHAPE = (1080, 1920, 3)
SIZES = [64, 4096, 65536, MiB]
RING_CAP, RING_FRAME_CAP = 8 * MiB, 32 * MiB
PEERS = ["mp.Queue", "mp.Pipe", "os.pipe", "posix_ipc", "sysv_ipc", "faster-fifo", "pyzmq"]
KIPC = ["ring", "ring-view", "kipc.Queue", "ring-batch"]
BATCH = 256
_ns = f"kipcbench{os.getpid()}"
_count = iter(range(1_000_000))

Send = Callable[[Any], None]
Recv = Callable[[], Any]


def _name() -> str:
    return f"{_ns}-{next(_count)}"


class Link:
    """Two one-way channels (a: parent -> child, b: child -> parent) and how to use them."""

    def __init__(self, a_send: Send, a_recv: Recv, b_send: Send, b_recv: Recv, close: Callable[[], None],
                 send_frame: Send | None = None, recv_frame: Recv | None = None, max_size: int | None = None,
                 child_done: Callable[[], None] = lambda: None) -> None:
        self.a_send, self.a_recv, self.b_send, self.b_recv, self.close = a_send, a_recv, b_send, b_recv, close
        self.child_done = child_done  # flush before the child's os._exit (queues with feeder threads)
        self.send_frame = send_frame or (lambda arr: a_send(memoryview(arr).cast("B")))
        self.recv_frame = recv_frame or (lambda: np.frombuffer(a_recv(), np.uint8).reshape(FRAME_SHAPE))
        self.max_size = max_size


def _ring(view: bool, size: int) -> Link:
    cap = RING_FRAME_CAP if size > MiB else RING_CAP
    a, b = RingChannel(_name(), create=True, capacity=cap), RingChannel(_name(), create=True, capacity=MiB)
    if view:
        def recv_view() -> Any:
            mv = a.recv(view=True)
            first = mv[0] if len(mv) else 0  # touch it, then give the space back
            mv.release()
            return first

        def recv_arr() -> Any:
            arr = a.recv_array(copy=False)
            s = int(arr[0, 0, 0])
            del arr
            return s
        return Link(a.send, recv_view, b.send, b.recv, lambda: (a.close(), b.close()), a.send_array, recv_arr)
    return Link(a.send, a.recv, b.send, b.recv, lambda: (a.close(), b.close()), a.send_array,
                lambda: a.recv_array())


def _queue(cls: Any) -> Link:
    a, b = cls(), cls()

    def close() -> None:
        for q in (a, b):
            if hasattr(q, "_ch") and q._ch.owner:
                q._ch.unlink()
            q.close()
            if hasattr(q, "cancel_join_thread"):
                q.cancel_join_thread()
    def flush() -> None:
        b.close()
        b.join_thread()
    return Link(a.put, a.get, b.put, b.get, close, a.put, a.get, child_done=flush)


def _mp_pipe() -> Link:
    ar, aw = mp.Pipe(duplex=False)
    br, bw = mp.Pipe(duplex=False)
    return Link(aw.send_bytes, ar.recv_bytes, bw.send_bytes, br.recv_bytes,
                lambda: [c.close() for c in (ar, aw, br, bw)], aw.send, ar.recv)  # type: ignore[func-returns-value]


def _os_pipe() -> Link:
    import fcntl

    fds = [*os.pipe(), *os.pipe()]
    for fd in fds[1::2]:
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MiB)
        except OSError:
            pass
    hdr = struct.Struct("<Q")

    def sender(fd: int) -> Send:
        def send(data: Any) -> None:
            mv = memoryview(data).cast("B")
            os.write(fd, hdr.pack(mv.nbytes))
            while mv.nbytes:
                mv = mv[os.write(fd, mv):]
        return send

    def receiver(fd: int) -> Recv:
        def read_exact(n: int) -> bytearray:
            buf = bytearray(n)
            mv, got = memoryview(buf), 0
            while got < n:
                k = os.readv(fd, [mv[got:]])
                if not k:
                    raise EOFError
                got += k
            return buf

        def recv() -> bytes:
            return bytes(read_exact(hdr.unpack(read_exact(8))[0]))
        return recv
    return Link(sender(fds[1]), receiver(fds[0]), sender(fds[3]), receiver(fds[2]),
                lambda: [os.close(fd) for fd in fds])  # type: ignore[func-returns-value]


def _posix_mq() -> Link:
    import posix_ipc

    limit = min(8192, int(open("/proc/sys/fs/mqueue/msgsize_max").read()))
    qa = posix_ipc.MessageQueue("/" + _name(), posix_ipc.O_CREX, max_messages=10, max_message_size=limit)
    qb = posix_ipc.MessageQueue("/" + _name(), posix_ipc.O_CREX, max_messages=10, max_message_size=limit)

    def close() -> None:
        for q in (qa, qb):
            q.close()
            q.unlink()
    return Link(qa.send, lambda: qa.receive()[0], qb.send, lambda: qb.receive()[0], close, max_size=limit)


def _sysv_mq() -> Link:
    import sysv_ipc

    limit = 8192
    qa = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600, max_message_size=limit)
    qb = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600, max_message_size=limit)
    return Link(qa.send, lambda: qa.receive()[0], qb.send, lambda: qb.receive()[0],
                lambda: (qa.remove(), qb.remove()), max_size=limit)


def _faster_fifo() -> Link:
    import faster_fifo  # type: ignore[import-not-found]

    a, b = faster_fifo.Queue(64 * MiB), faster_fifo.Queue(MiB)
    return Link(a.put, a.get, b.put, b.get, lambda: None, a.put, a.get)


def _zmq() -> Link:

    raise NotImplementedError("pyzmq is importable but its fork-safe setup is not written here")


def make(mech: str, size: int) -> Link:
    factories: dict[str, Callable[[], Link]] = {
        "ring": lambda: _ring(False, size), "ring-view": lambda: _ring(True, size),
        "kipc.Queue": lambda: _queue(kipc.Queue), "mp.Queue": lambda: _queue(mp.get_context("fork").Queue),
        "mp.Pipe": _mp_pipe, "os.pipe": _os_pipe, "posix_ipc": _posix_mq, "sysv_ipc": _sysv_mq,
        "faster-fifo": _faster_fifo, "pyzmq": _zmq,
    }
    return factories[mech]()


# --------------------------------------------------------------------------- measurement
def _steal() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    return parts[7], sum(parts[:8])


def _in_child(link: Link, body: Callable[[Link], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body(link)
            link.child_done()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _join(pid: int) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise RuntimeError("benchmark child hung")


class _Hung(Exception):
    pass


def _alarm(signo: int, frame: Any) -> None:
    raise _Hung("no progress within 120 s (the child died or the mechanism hung)")


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run one measurement with a deadline (every wait has one)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _reap(pid: int) -> None:
    """After an error: make sure the child is gone."""
    try:
        if not os.waitpid(pid, os.WNOHANG)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def rtt(mech: str, iters: int) -> list[float]:
    """Per-message round-trip times (µs) of a 64 B message."""
    link = make(mech, 64)
    msg = b"r" * 64
    warm = max(200, iters // 10)

    def echo(lk: Link) -> None:
        for _ in range(warm + iters):
            lk.b_send(lk.a_recv())

    pid = _in_child(link, echo)
    try:
        out = []
        clock = time.perf_counter_ns
        for i in range(warm + iters):
            t0 = clock()
            link.a_send(msg)
            link.b_recv()
            if i >= warm:
                out.append((clock() - t0) / 1000)
        _join(pid)
        return out
    finally:
        _reap(pid)
        link.close()


def stream(mech: str, size: int, n: int) -> float:
    """Seconds to move n messages of ``size`` bytes (size 0: numpy frames) one way, acknowledged."""
    link = make(mech, size if size else 8 * MiB)
    if (link.max_size is not None and size > link.max_size) or (size == 0 and link.max_size is not None):
        link.close()
        raise ValueError(f"message size over the mechanism's limit ({link.max_size} B)")
    frame = np.random.default_rng(0).integers(0, 255, FRAME_SHAPE, dtype=np.uint8) if size == 0 else None
    msg = b"s" * size
    nbytes = size or frame.nbytes  # type: ignore[union-attr]
    # Warm-up: twice the ring's capacity, so every page is mapped on both sides before timing
    # (the first touch of a fresh shm page costs far more than the copy).
    warm = max(2, min(5000, 2 * (RING_FRAME_CAP if size == 0 else RING_CAP) // nbytes))

    def sink(lk: Link) -> None:
        recv = lk.recv_frame if size == 0 else lk.a_recv
        for _ in range(warm + n):
            recv()
        lk.b_send(b"done")

    pid = _in_child(link, sink)
    try:
        send = link.send_frame if size == 0 else link.a_send
        obj = frame if size == 0 else msg
        for _ in range(warm):
            send(obj)
        t0 = time.perf_counter()
        for _ in range(n):
            send(obj)
        link.b_recv()
        dt = time.perf_counter() - t0
        _join(pid)
        return dt
    finally:
        _reap(pid)
        link.close()


def batch_stream(n: int) -> float:
    """Seconds to move n 64 B messages one way with send_many/recv_many batches, acknowledged."""
    a, b = _name(), _name()
    tx = RingChannel(a, create=True, capacity=RING_CAP)
    ack = RingChannel(b, create=True, capacity=RING_CAP)
    batch = [b"s" * 64] * BATCH
    warm = 20_000

    def sink() -> None:
        rx, back = RingChannel(a), RingChannel(b)
        got = 0
        while got < warm + n:
            got += len(rx.recv_many(BATCH))
        back.send(b"done")

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sink()
            code = 0
        finally:
            os._exit(code)
    try:
        sent = 0
        while sent < warm:
            sent += tx.send_many(batch)
        t0 = time.perf_counter()
        sent = 0
        while sent < n:
            sent += tx.send_many(batch)
        ack.recv()
        dt = time.perf_counter() - t0
        _join(pid)
        return dt * n / sent
    finally:
        _reap(pid)
        tx.close()
        ack.close()


def memcpy_bw(size: int = MiB, n: int = 2000) -> float:
    """Single-thread memcpy bandwidth (10^6 B/s) of `size`-byte buffers (numpy copyto)."""
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    for _ in range(50):
        np.copyto(dst, src)
    t0 = time.perf_counter()
    for _ in range(n):
        np.copyto(dst, src)
    return n * size / (time.perf_counter() - t0) / 1e6


def _available(mech: str) -> str | None:
    mod = {"faster-fifo": "faster_fifo", "pyzmq": "zmq"}.get(mech)
    if mod is None:
        return None
    try:
        __import__(mod)
    except ImportError:
        return "not installed"
    return None


def run(quick: bool = False, repeat: int | None = None, mechanisms: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows: one per (mechanism, metric, size) with best and median over the repeats."""
    os.environ.setdefault("KIPC_TEST_NS", _ns)
    repeat = repeat or (1 if quick else 3)
    rtt_iters = 2000 if quick else 20000
    budget = 256 * MiB if quick else 1024 * MiB  # bytes per stream measurement
    frame_bytes = int(np.prod(FRAME_SHAPE))
    rows: list[dict[str, Any]] = []
    for mech in mechanisms or KIPC + PEERS:
        kind = "kipc" if mech in KIPC else "peer"
        why = _available(mech)
        if why:
            rows.append({"mechanism": mech, "kind": kind, "metric": "skipped", "error": why})
            continue
        if mech == "ring-batch":
            n = 200_000 if quick else 2_000_000
            s0 = _steal()
            times = [_guarded(batch_stream, n) for _ in range(repeat)]
            s1 = _steal()
            best, med = min(times), statistics.median(times)
            rows.append({"mechanism": mech, "kind": kind, "metric": "stream", "size": 64, "frame": False, "n": n,
                         "msgs_s": n / best, "msgs_s_median": n / med, "mb_s": n * 64 / best / 1e6,
                         "mb_s_median": n * 64 / med / 1e6, "steal": (s1[0] - s0[0]) / max(1, s1[1] - s0[1])})
            continue
        if mech == "ring":
            bw = [memcpy_bw() for _ in range(repeat)]
            rows.append({"mechanism": "memcpy", "kind": "reference", "metric": "stream", "size": MiB,
                         "frame": False, "n": 2000, "msgs_s": max(bw) * 1e6 / MiB,
                         "msgs_s_median": statistics.median(bw) * 1e6 / MiB, "mb_s": max(bw),
                         "mb_s_median": statistics.median(bw), "steal": 0.0})
        if mech != "ring-view":
            s0 = _steal()
            medians, p99s = [], []
            for _ in range(repeat):
                t = sorted(_guarded(rtt, mech, rtt_iters))
                medians.append(t[len(t) // 2])
                p99s.append(t[int(len(t) * 0.99)])
            s1 = _steal()
            rows.append({"mechanism": mech, "kind": kind, "metric": "rtt_us", "size": 64,
                         "best": min(medians), "median": statistics.median(medians), "p99": min(p99s),
                         "steal": (s1[0] - s0[0]) / max(1, s1[1] - s0[1])})
        for size in [*SIZES, 0]:
            nbytes = size or frame_bytes
            n = max(20, min(200_000 if quick else 1_000_000, budget // nbytes))
            if size == 0:
                n = max(10, n // 4)
            s0 = _steal()
            try:
                times = [_guarded(stream, mech, size, n) for _ in range(repeat)]
            except Exception as e:
                rows.append({"mechanism": mech, "kind": kind, "metric": "stream", "size": nbytes,
                             "frame": size == 0, "error": f"{type(e).__name__}: {e}"})
                continue
            s1 = _steal()
            best, med = min(times), statistics.median(times)
            rows.append({"mechanism": mech, "kind": kind, "metric": "stream", "size": nbytes, "frame": size == 0,
                         "n": n, "msgs_s": n / best, "msgs_s_median": n / med, "mb_s": n * nbytes / best / 1e6,
                         "mb_s_median": n * nbytes / med / 1e6,
                         "steal": (s1[0] - s0[0]) / max(1, s1[1] - s0[1])})
    _ratios(rows)
    return rows


def _ratios(rows: list[dict[str, Any]]) -> None:
    """ratio_to_best_peer on every kipc row: >1 means kipc is better."""
    peers = [r for r in rows if r["kind"] == "peer" and "error" not in r]
    for r in rows:
        if r["kind"] != "kipc" or "error" in r:
            continue
        if r["metric"] == "rtt_us":
            best = min((p["best"] for p in peers if p["metric"] == "rtt_us"), default=None)
            mpq = next((p["best"] for p in peers if p["metric"] == "rtt_us" and p["mechanism"] == "mp.Queue"), None)
            r["ratio_to_best_peer"] = best / r["best"] if best else None
            r["ratio_to_mp_queue"] = mpq / r["best"] if mpq else None
        elif r["metric"] == "stream":
            same = [p for p in peers if p["metric"] == "stream" and p["size"] == r["size"]]
            best = max((p["msgs_s"] for p in same), default=None)
            mpq = next((p["msgs_s"] for p in same if p["mechanism"] == "mp.Queue"), None)
            r["ratio_to_best_peer"] = r["msgs_s"] / best if best else None
            r["ratio_to_mp_queue"] = r["msgs_s"] / mpq if mpq else None


def _fmt(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'mechanism':12} {'metric':7} {'size':>9} {'best':>12} {'median':>12} {'MB/s':>9} "
             f"{'vs best peer':>12} {'steal':>6}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['mechanism']:12} {r['metric']:7} {r.get('size', ''):>9} {r['error']}")
            continue
        ratio = r.get("ratio_to_best_peer")
        ratio_s = f"{ratio:.1f}x" if ratio else ""
        if r["metric"] == "rtt_us":
            lines.append(f"{r['mechanism']:12} {'rtt':7} {64:>9} {r['best']:10.2f}µs {r['median']:10.2f}µs "
                         f"{'p99 ' + format(r['p99'], '.1f'):>9} {ratio_s:>12} {r['steal']:6.1%}")
        else:
            size = "frame" if r["frame"] else r["size"]
            lines.append(f"{r['mechanism']:12} {'stream':7} {size:>9} {r['msgs_s']:8.0f}/s {r['msgs_s_median']:8.0f}/s "
                         f"{r['mb_s']:9.0f} {ratio_s:>12} {r['steal']:6.1%}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", nargs="*", help="mechanisms to run (default: all)")
    args = ap.parse_args()
    rows = run(args.quick, args.repeat, args.only)
    print(json.dumps(rows, indent=1) if args.json else _fmt(rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
