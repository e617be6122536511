"""The only importer of kipc's C extensions; kernel limits; feature flags.

``native("_ring")`` / ``native("_sig")`` return the compiled module or raise an
ImportError that says how to build it. Limits are read from ``/proc/sys``
each time (an administrator may change them while we run).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

__all__ = ["HAS_MQUEUE_FS", "IS_LINUX", "mqueue_mount", "native", "sysctl", "sysctl_path"]

IS_LINUX = sys.platform.startswith("linux")

_cache: dict[str, ModuleType] = {}


def native(name: str) -> ModuleType:
    """Import ``kipc._native.<name>`` (a C extension built by the package's build)."""
    mod = _cache.get(name)
    if mod is None:
        try:
            mod = importlib.import_module(f"kipc._native.{name}")
        except ImportError as e:
            raise ImportError(
                f"kipc's C extension kipc._native.{name} is not built ({e}); "
                "build it with `make build` or `pip install -e .` from the source tree"
            ) from e
        _cache[name] = mod
    return mod


def sysctl_path(name: str) -> str:
    """``kernel.msgmax`` -> ``/proc/sys/kernel/msgmax``."""
    return "/proc/sys/" + name.replace(".", "/")


def sysctl(name: str, default: int | None = None) -> int | None:
    """An integer kernel limit such as ``kernel.msgmax`` or ``fs.mqueue.msg_max``."""
    try:
        with open(sysctl_path(name)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def mqueue_mount() -> str | None:
    """Where the mqueue filesystem is mounted, if it is (kipc never needs it)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "mqueue":
                    return parts[1]
    except OSError:
        pass
    return None


HAS_MQUEUE_FS = mqueue_mount() is not None
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
