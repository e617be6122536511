"""Public test helpers: use them to test your own kipc code the way kipc tests itself.

* :func:`unique_name` / :func:`unique_key` — names and SysV keys inside this
  test's namespace (``KIPC_TEST_NS``), so leak checks can tell whose an object is.
* :func:`channel_pair` — a connected ``(sender, receiver)`` for any scheme, both
  closed (and the object removed) on exit. The pair factories live in
  :mod:`kipc.testing._pairs`, one per scheme, not in the transport classes;
  :func:`register_pair` adds one for a scheme of your own.
* :class:`Child` / :func:`spawn` — a real ``python -c`` child that prints
  ``READY`` when it is set up; every wait has a deadline and the child is
  killed on exit, so a broken test fails instead of hanging (from
  :mod:`kipc._procs`, which the CLI uses too).
* :class:`LeakChecker` — snapshots /dev/shm, /proc/sysvipc, the mqueue fs,
  kipc's runtime dir and owner records; ``check()`` fails listing whatever this
  namespace left behind.
* :func:`nats_server` / :func:`nats_cluster` — real ``nats-server`` processes
  (:mod:`kipc.testing._nats`).

Production code never imports this package.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from .. import _owners
from .._base import Channel
from .._naming import _issued_keys, issued_keys, namespace, runtime_dir, unique_key, unique_name
from .._platform import mqueue_mount
from .._procs import PYTHON, Child, spawn
from ._pairs import pair_factory, register_pair

__all__ = [
    "PYTHON", "Child", "LeakChecker", "channel_pair", "issued_keys", "namespace", "nats_cluster", "nats_server",
    "register_pair", "spawn", "unique_key", "unique_name",
]

_ = _issued_keys  # the set the leak-check fixture clears between tests (tests/conftest.py)


@contextlib.contextmanager
def channel_pair(scheme: str, **options: Any) -> Iterator[tuple[Channel, Channel]]:
    """A connected (sender, receiver) of ``scheme`` in this process; closed and removed on exit.

    The sender is the creator where the mechanism has one. ``options`` go to
    both ends (``servers=`` for nats; without it a private nats-server runs
    for the pair's lifetime).
    """
    with pair_factory(scheme)(unique_name(scheme), **options) as pair:
        yield pair


class LeakChecker:
    """Find IPC objects a namespace left behind (names containing it, SysV keys issued to it)."""

    def __init__(self, ns: str | None = None) -> None:
        self.ns = ns or namespace()
        self.keys_before = issued_keys()

    def leftovers(self) -> list[str]:
        ns = self.ns
        found: list[str] = []
        for name in _listdir("/dev/shm"):
            if ns in name:
                found.append(f"/dev/shm/{name}")
        mq = mqueue_mount()
        if mq:
            found += [f"mqueue {n}" for n in _listdir(mq) if ns in n]
        keys = issued_keys()
        for kind in ("msg", "shm", "sem"):
            try:
                with open(f"/proc/sysvipc/{kind}") as f:
                    next(f)
                    for line in f:
                        key = int(line.split()[0])
                        if key in keys:
                            found.append(f"sysv {kind} key {key:#x}")
            except OSError:
                pass
        base = runtime_dir()
        for dirpath, dirnames, filenames in os.walk(base):
            for n in dirnames + filenames:
                if ns in n:
                    found.append(os.path.join(dirpath, n))
        for rec in _owners.records():
            if ns in rec.url or any(f"{k}" in rec.url for k in keys):
                found.append(f"owner record {rec.url}")
        for n in _listdir("/tmp"):
            if ns in n:
                found.append(f"/tmp/{n}")
        return sorted(set(found))

    def check(self) -> None:
        left = self.leftovers()
        if left:
            raise AssertionError(f"namespace {self.ns} left IPC objects behind: {left}")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def nats_server(**kwargs: Any) -> Any:
    """A real ``nats-server -js`` on a free loopback port (context manager); see kipc.testing._nats."""
    from ._nats import nats_server as _impl

    return _impl(**kwargs)


def nats_cluster(**kwargs: Any) -> Any:
    """A 3-node NATS cluster on loopback ports (context manager); see kipc.testing._nats."""
    from ._nats import nats_cluster as _impl

    return _impl(**kwargs)
