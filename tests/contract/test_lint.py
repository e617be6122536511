"""The code base stays ruff- and mypy-clean (versions pinned in the ``dev`` extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..helpers import REPO

ROOT = Path(REPO)
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_clean() -> None:
    r = _run(str(BIN / "ruff"), "check", "src", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = _run(str(BIN / "mypy"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_native_stubs_match_modules() -> None:
    """Every C extension has a .pyi naming exactly the functions/types it exports."""
    import ast
    import importlib

    native = ROOT / "src" / "kipc" / "_native"
    for c_file in sorted(native.glob("*.c")):
        name = c_file.stem
        stub = native / f"{name}.pyi"
        assert stub.exists(), f"{name}.c has no {name}.pyi"
        declared = {n.name for n in ast.parse(stub.read_text()).body
                    if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        declared |= {t.id for n in ast.parse(stub.read_text()).body if isinstance(n, ast.AnnAssign)
                     for t in [n.target] if isinstance(t, ast.Name)}
        mod = importlib.import_module(f"kipc._native.{name}")
        exported = {k for k in vars(mod) if not k.startswith("__")}
        assert declared == exported, f"{name}: stub {sorted(declared ^ exported)} differ"
