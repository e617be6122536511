"""ring:// from C (kipc_ring.h): C↔C and C↔Python 64 B round trips against their baselines, in one run.

Rows, interleaved and repeated (best of ``--repeat``, default 5), each between two real processes:

* ``C↔C ring``: a C client and a C echo over two rings (requests, replies), default spin.
* ``C spin line``: the floor — two C processes ping-ponging on one shared cache line, busy-spinning
  (no ring, no locks, no futex). Target: C↔C ring ≤ 3x of it in the same run.
* ``C SPSC floor`` / ``C SPSC floor, commit in record``: the floor of ring://'s record shape
  (``ring_c/spsc_floor.c``): two minimal lock-free SPSC rings of 16 B header + 64 B payload records,
  busy-spinning, no locks, checks, counters or futex; the commit a tail word on its own line, or a
  sequence word in the record header. C↔C ring / floor is the ring's software cost, floor / spin
  line what the record shape costs on this machine. ``C SPSC floor, commit in line-aligned record``:
  the same with every record starting on a cache line of its own (80 -> 128 bytes; not ring://'s
  shape): what a line-aligned layout with the commit in the record would buy.
* ``C↔Python ring``: a Python client (``send``/``recv``) and the C echo.
* ``Python↔Python ring``: the same Python client and a Python echo child: the peer of the row above.

With ``--baseline-include DIR`` (another tree's ``src/kipc/_native/include``, e.g. from
``git archive 814e3ce src/kipc/_native | tar -x -C /tmp/base``: ring layout v2), two more rows: ``C↔C ring (pair)`` and
``C↔C ring (pair, baseline)``, the same C↔C round trip on rings the C program creates itself
(``bench_peer pair``), built from this tree and from DIR: a before/after of the ring's C code in one
run, which works across ring layout versions (Python here speaks this tree's layout only).

The machine is shared (2 cores, other jobs): absolute figures swing from run to run; compare rows
of one run. The C programs are built at start with ``gcc -O2 ... -I"$(python -m kipc --include)"``.
Each figure is the mean over ``--n`` round trips; with ``--median`` it is the median over batches of
16 round trips instead (ns per round trip), which a preempted batch on a loaded machine hardly moves.

    .venv/bin/python benchmarks/bench_ring_c.py [--repeat N] [--n N] [--median] [--json]
                                                [--baseline-include DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kipc

HERE = Path(__file__).resolve().parent
_ns = f"kipcbenchc{os.getpid()}"
_count = iter(range(1_000_000))
BATCH = 16  # --median: round trips per timed batch
_batch = 0  # 0: the mean over all round trips (the default); BATCH with --median
ECHO_PY = """
import sys, kipc
req, rep = kipc.open(f"ring://{sys.argv[1]}"), kipc.open(f"ring://{sys.argv[2]}")
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    rep.send(req.recv(timeout=60))
req.close(); rep.close()
"""


def _build_peer(tmp: str, include: str, name: str) -> str:
    exe = os.path.join(tmp, name)
    subprocess.run(["gcc", "-O2", "-o", exe, str(HERE / "ring_c" / "bench_peer.c"), f"-I{include}", "-lpthread"],
                   check=True)
    return exe


def _build(tmp: str) -> tuple[str, str]:
    include = subprocess.run([sys.executable, "-m", "kipc", "--include"], capture_output=True, text=True,
                             check=True).stdout.strip()
    exe = _build_peer(tmp, include, "bench_peer")
    floor = os.path.join(tmp, "spsc_floor")
    subprocess.run(["gcc", "-O2", "-o", floor, str(HERE / "ring_c" / "spsc_floor.c")], check=True)
    return exe, floor


@contextmanager
def _rings() -> Iterator[tuple[str, str]]:
    names = (f"{_ns}-req{next(_count)}", f"{_ns}-rep{next(_count)}")
    with kipc.open(f"ring://{names[0]}", create=True, capacity=1 << 16), \
            kipc.open(f"ring://{names[1]}", create=True, capacity=1 << 16):
        yield names


def _echo(argv: list[str]) -> subprocess.Popen[str]:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _b() -> list[str]:
    return [str(_batch)] if _batch else []


def c_spin(exe: str, n: int) -> float:
    return float(subprocess.run([exe, "spin", str(n), *_b()], capture_output=True, text=True, check=True).stdout)


def c_floor(floor: str, mode: str, n: int, align: int = 16) -> float:
    return float(subprocess.run([floor, mode, str(n), str(_batch), str(align)], capture_output=True, text=True,
                                check=True).stdout)


def c_pair(exe: str, n: int, warm: int) -> float:
    name = f"{_ns}-pair{next(_count)}"
    return float(subprocess.run([exe, "pair", name, str(n), str(warm), *_b()], capture_output=True, text=True,
                                check=True).stdout)


def c_c(exe: str, n: int, warm: int) -> float:
    with _rings() as (req, rep):
        echo = _echo([exe, "echo", req, rep, str(n + warm)])
        out = subprocess.run([exe, "client", req, rep, str(n), str(warm), *_b()], capture_output=True,
                             text=True, check=True).stdout
        echo.wait(60)
        return float(out)


def _py_client(req: str, rep: str, n: int, warm: int) -> float:
    msg = b"x" * 64
    with kipc.open(f"ring://{req}") as tx, kipc.open(f"ring://{rep}") as rx:
        send, recv = tx.send, rx.recv
        for _ in range(warm):
            send(msg)
            recv()
        if _batch:
            clock, times = time.perf_counter, []
            for _ in range(n // _batch):
                t = clock()
                for _ in range(_batch):
                    send(msg)
                    recv()
                times.append(clock() - t)
            return statistics.median(times) / _batch * 1e9
        t = time.perf_counter()
        for _ in range(n):
            send(msg)
            recv()
        return (time.perf_counter() - t) / n * 1e9


def py_c(exe: str, n: int, warm: int) -> float:
    with _rings() as (req, rep):
        echo = _echo([exe, "echo", req, rep, str(n + warm)])
        ns = _py_client(req, rep, n, warm)
        echo.wait(60)
        return ns


def py_py(exe: str, n: int, warm: int) -> float:
    with _rings() as (req, rep):
        echo = _echo([sys.executable, "-c", ECHO_PY, req, rep, str(n + warm)])
        ns = _py_client(req, rep, n, warm)
        echo.wait(60)
        return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n", type=int, default=20000, help="round trips per measurement")
    ap.add_argument("--median", action="store_true", help=f"median over batches of {BATCH} round trips")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--baseline-include", metavar="DIR",
                    help="another tree's kipc_ring.h directory: adds the C-created C↔C rows, this tree vs DIR")
    args = ap.parse_args()
    global _batch
    _batch = BATCH if args.median else 0
    if _batch:
        args.n = -(-args.n // BATCH) * BATCH  # whole batches: the echo answers exactly n + warm-up
    os.environ.setdefault("KIPC_TEST_NS", _ns)
    with tempfile.TemporaryDirectory(prefix="kipc-bench-c-") as tmp:
        exe, floor = _build(tmp)
        rows: dict[str, list[float]] = {k: [] for k in ("C↔C ring", "C spin line", "C SPSC floor",
                                                        "C SPSC floor, commit in record",
                                                        "C SPSC floor, commit in line-aligned record", "C↔Python ring",
                                                        "Python↔Python ring")}
        base = _build_peer(tmp, args.baseline_include, "bench_peer_base") if args.baseline_include else ""
        if base:
            rows["C↔C ring (pair)"] = []
            rows["C↔C ring (pair, baseline)"] = []
        warm = max(100, args.n // 10)
        for _ in range(args.repeat):  # interleaved: every row sees the same machine moments
            rows["C spin line"].append(c_spin(exe, args.n))
            rows["C SPSC floor"].append(c_floor(floor, "tail", args.n))
            rows["C SPSC floor, commit in record"].append(c_floor(floor, "rec", args.n))
            rows["C SPSC floor, commit in line-aligned record"].append(c_floor(floor, "rec", args.n, 64))
            rows["C↔C ring"].append(c_c(exe, args.n, warm))
            if base:
                rows["C↔C ring (pair, baseline)"].append(c_pair(base, args.n, warm))
                rows["C↔C ring (pair)"].append(c_pair(exe, args.n, warm))
            rows["C↔Python ring"].append(py_c(exe, args.n, warm))
            rows["Python↔Python ring"].append(py_py(exe, args.n, warm))
    best = {k: min(v) for k, v in rows.items()}
    if args.json:
        print(json.dumps({"best_ns": best, "all_ns": rows}))
        return
    stat = f"median of {BATCH}-round-trip batches" if _batch else "mean"
    print(f"64 B round trips, best of {args.repeat} x {args.n}, {stat} (ns per round trip)")
    print("| row | best | all runs | ratio |")
    print("|---|---|---|---|")
    spin = best["C spin line"]
    ratio = {"C↔C ring": best["C↔C ring"] / spin, "C SPSC floor": best["C SPSC floor"] / spin,
             "C SPSC floor, commit in record": best["C SPSC floor, commit in record"] / spin,
             "C SPSC floor, commit in line-aligned record": best["C SPSC floor, commit in line-aligned record"] / spin,
             "C↔Python ring": best["C↔Python ring"] / best["Python↔Python ring"]}
    peer = {"C↔C ring": f"x C spin line, {best['C↔C ring'] / best['C SPSC floor']:.2f} x C SPSC floor",
            "C SPSC floor": "x C spin line", "C SPSC floor, commit in record": "x C spin line",
            "C SPSC floor, commit in line-aligned record": "x C spin line",
            "C↔Python ring": "x Python↔Python"}
    if base:
        ratio["C↔C ring (pair)"] = best["C↔C ring (pair)"] / best["C↔C ring (pair, baseline)"]
        peer["C↔C ring (pair)"] = "x baseline"
    for k, v in rows.items():
        r = f"{ratio[k]:.2f} {peer[k]}" if k in ratio else ""
        print(f"| {k} | {best[k]:.0f} | {' '.join(f'{x:.0f}' for x in v)} | {r} |")


if __name__ == "__main__":
    main()
