"""The ring's pure-C core without Python: its C unit tests, a fuzz smoke and the C API
(``kipc_ring.h``, header-only), built with gcc under ASan+UBSan at test time (the same as
``make test-c``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kipc import testing

from ..helpers import REPO

HERE = Path(__file__).parent
CORE = Path(REPO) / "src/kipc/_native/ring/ring_core.c"
FLAGS = ["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-Wno-unused-function",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _build(tmp_path: Path, src: str, *, core: bool = True) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = tmp_path / src.removesuffix(".c")
    subprocess.run(["gcc", *FLAGS, "-o", str(exe), str(HERE / src), *([str(CORE)] if core else []), "-lpthread",
                    "-lm"], check=True, timeout=120)
    return exe


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # `make sanitize` preloads for Python
    env["ASAN_OPTIONS"] = "detect_leaks=1"
    return env


def test_core_unit_tests(tmp_path: Path) -> None:
    p = subprocess.run([str(_build(tmp_path, "test_ring_core.c"))], capture_output=True, text=True, timeout=120,
                       env=_env())
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all checks passed" in p.stdout


def test_core_fuzz_smoke(tmp_path: Path) -> None:
    p = subprocess.run([str(_build(tmp_path, "fuzz_ring_core.c")), "5000"], capture_output=True, text=True,
                       timeout=300, env=_env())
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    assert "0 findings" in p.stdout


def test_c_api_under_sanitizers(tmp_path: Path) -> None:
    """kipc_ring.h carries ring_core.c itself: built alone, threads, ASan leak check on."""
    env = {**_env(), "KIPC_RUNTIME_DIR": str(tmp_path / "rt")}  # its owner record lands there
    p = subprocess.run([str(_build(tmp_path, "test_capi.c", core=False)), testing.unique_name("capi")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    assert "capi: all checks passed" in p.stdout
