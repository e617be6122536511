"""Every fenced code block of README.md and docs/*.md runs (issue 16), or says why it cannot.

* ``python`` blocks are executed (``python FILE`` in a temp dir); ``sh`` blocks run with ``sh -e``
  in a temp dir with the venv's ``kipc`` first on PATH; ``c`` blocks are compiled with gcc
  (``-lrt -pthread``, ``-I`` kipc's include directory for ``kipc_ring.h``) and run.
* ``<!-- pair: NAME -->`` before two blocks runs them together as two processes (the first
  started first, e.g. a C program and the Python program that talks to it); both must exit 0.
* ``<!-- no-run: REASON -->`` right before a block: it is not run, and REASON says why.
* ``text`` blocks (diagrams, layouts) are not code. A block with no language is an error.

Each block gets its own ``KIPC_RUNTIME_DIR`` and ``XDG_RUNTIME_DIR`` (fifo://NAME, unix://NAME and
file://NAME land there) and a deadline.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"python", "sh", "c"}
_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*(pair|no-run)\s*:\s*(.*?)\s*-->\s*\Z", re.S)
DEADLINE = 60.0  # below pytest-timeout (120 s), so the harness kills a stuck example itself
_URL = re.compile(r"\b(?:ring|sysvmq|posixmq|sysv|posix)://[\w.-]+")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    code: str
    mark: str = ""  # "pair" / "no-run" / ""
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in _FENCE.finditer(text):
            before = text[: m.start()].rstrip()
            tail = before[before.rfind("\n<!--") + 1 if "\n<!--" in before else 0:]
            b = Block(str(doc.relative_to(ROOT)), text[: m.start()].count("\n") + 1, m.group(1), m.group(2))
            mark = _MARK.search(tail)
            if mark and before.endswith("-->"):
                b.mark, b.arg = mark.group(1), mark.group(2)
            out.append(b)
    return out


def _units() -> list[list[Block]]:
    """What runs together: single blocks, or the two blocks of a pair."""
    units: list[list[Block]] = []
    pending: dict[tuple[str, str], Block] = {}
    for b in blocks():
        if b.lang == "text" or b.mark == "no-run":
            continue
        if b.mark == "pair":
            key = (b.doc, b.arg)
            if key in pending:
                units.append([pending.pop(key), b])
            else:
                pending[key] = b
            continue
        units.append([b])
    assert not pending, f"a pair without its second block: {[b.where for b in pending.values()]}"
    return units


def test_every_block_runs_or_says_why() -> None:
    problems = []
    for b in blocks():
        if b.lang not in LANGS | {"text"}:
            problems.append(f"{b.where}: block language {b.lang!r} (use python, sh, c, or text)")
        if b.mark == "no-run" and len(b.arg) < 10:
            problems.append(f"{b.where}: no-run needs a reason")
    assert not problems, "\n".join(problems)


def _env(tmp: Path) -> dict[str, str]:
    rt = tmp / "run"
    rt.mkdir(mode=0o700)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "KIPC_RUNTIME_DIR": str(rt / "kipc"), "XDG_RUNTIME_DIR": str(rt),
           "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "PYTHONUNBUFFERED": "1"}
    (rt / "kipc").mkdir(mode=0o700)
    return env


def _command(b: Block, tmp: Path, n: int) -> list[str]:
    if b.lang == "python":
        path = tmp / f"block{n}.py"
        path.write_text(b.code)
        return [sys.executable, str(path)]
    if b.lang == "sh":
        path = tmp / f"block{n}.sh"
        path.write_text(b.code)
        return ["sh", "-e", str(path)]
    src, exe = tmp / f"block{n}.c", tmp / f"block{n}"
    src.write_text(b.code)
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to run the C examples"
    include = Path(__file__).resolve().parents[2] / "src/kipc/_native/include"  # python -m kipc --include
    r = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", f"-I{include}", "-o", str(exe), str(src), "-lrt",
                        "-pthread"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{b.where}: gcc failed\n{r.stderr}"
    return [str(exe)]


def _id(unit: list[Block]) -> str:
    return "+".join(b.where for b in unit)


def _run(unit: list[Block], cmds: list[list[str]], procs: list[subprocess.Popen[str]], tmp: Path,
         env: dict[str, str]) -> list[str]:
    for cmd in cmds:
        procs.append(subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
        if len(cmds) > 1:
            time.sleep(0.2)  # the first of a pair starts first (the other waits for it with wait=)
    end = time.monotonic() + DEADLINE
    failures = []
    for b, p in zip(unit, procs, strict=True):
        try:
            out, err = p.communicate(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            out, err = p.communicate()
            failures.append(f"{b.where}: still running after {DEADLINE:g} s\n{out}\n{err}")
            continue
        if p.returncode != 0:
            failures.append(f"{b.where}: exit {p.returncode}\n--- stdout\n{out}\n--- stderr\n{err}")
    return failures


@pytest.mark.parametrize("unit", _units(), ids=_id)
def test_example_runs(unit: list[Block]) -> None:
    with tempfile.TemporaryDirectory(prefix="kipc-docs-") as d:
        tmp = Path(d)
        env = _env(tmp)
        cmds = [_command(b, tmp, n) for n, b in enumerate(unit)]
        procs: list[subprocess.Popen[str]] = []
        try:
            failures = _run(unit, cmds, procs, tmp, env)
        finally:
            for p in procs:  # never leave an example running (a pytest timeout lands here too)
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        assert not failures, "\n".join(failures)
    # an example cleans up after itself: nothing it names is left (its runtime dir went with tmp)
    from kipc import admin

    left = sorted({u for b in unit for u in _URL.findall(b.code) if admin.describe(u)})
    assert not left, f"{_id(unit)} left {left} behind (kipc rm them)"
