"""Run every benchmark of the repository in one go (``make bench``; ``--quick`` for a short run).

Each module prints its own table with ratios against the baseline measured in
the same run (the machine is shared and noisy: compare ratios, not absolutes).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
MODULES = ["bench_fd.py", "bench_kernel.py", "bench_ring.py", "bench_sync.py", "bench_nats.py"]


def main() -> int:
    extra = sys.argv[1:]
    for name in MODULES:
        print(f"\n=== {name} {' '.join(extra)}", flush=True)
        sys.argv = [str(HERE / name), *extra]
        try:
            runpy.run_path(str(HERE / name), run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                print(f"{name} exited with {e.code}", file=sys.stderr)
                return int(e.code) if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
