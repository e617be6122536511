"""Public test helpers: use them to test your own kipc code the way kipc tests itself.

* :func:`unique_name` / :func:`unique_key` — names and SysV keys inside this
  test's namespace (``KIPC_TEST_NS``), so leak checks can tell whose an object is.
* :func:`channel_pair` — a connected ``(sender, receiver)`` for any scheme, both
  closed (and the object removed) on exit.
* :class:`Child` / :func:`spawn` — a real ``python -c`` child that prints
  ``READY`` when it is set up; every wait has a deadline and the child is
  killed on exit, so a broken test fails instead of hanging.
* :class:`LeakChecker` — snapshots /dev/shm, /proc/sysvipc, the mqueue fs,
  kipc's runtime dir and owner records; ``check()`` fails listing whatever this
  namespace left behind.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from . import _owners
from ._base import Channel
from ._naming import runtime_dir
from ._platform import mqueue_mount

__all__ = [
    "PYTHON", "Child", "LeakChecker", "channel_pair", "namespace", "nats_cluster", "nats_server", "spawn",
    "unique_key", "unique_name",
]

PYTHON = sys.executable
_counter = itertools.count()
_issued_keys: set[int] = set()


def namespace() -> str:
    """This test's namespace (``KIPC_TEST_NS``), or one made for this process."""
    ns = os.environ.get("KIPC_TEST_NS")
    if not ns:
        ns = f"kipct{os.getpid()}x{random.randrange(16**6):06x}"
        os.environ["KIPC_TEST_NS"] = ns
    return ns


def unique_name(prefix: str = "t") -> str:
    """A name unique to this test: ``<namespace>-<prefix><n>`` (valid for every scheme)."""
    return f"{namespace()}-{prefix}{next(_counter)}"


def _sysv_keys_in_use() -> set[int]:
    keys: set[int] = set()
    for kind in ("msg", "shm", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                next(f)
                for line in f:
                    keys.add(int(line.split()[0]))
        except OSError:
            pass
    return keys


def unique_key() -> int:
    """A SysV key no object uses now, remembered as this namespace's."""
    used = _sysv_keys_in_use()
    while True:
        key = random.randrange(0x4B000000, 0x4BFFFFFF)
        if key not in used and key not in _issued_keys:
            _issued_keys.add(key)
            return key


def issued_keys() -> frozenset[int]:
    return frozenset(_issued_keys)


@contextlib.contextmanager
def channel_pair(scheme: str, **options: Any) -> Iterator[tuple[Channel, Channel]]:
    """A connected (sender, receiver) of ``scheme`` in this process; closed and removed on exit.

    Each transport class provides ``test_pair(name, **options)`` returning the
    two ends; the sender is the creator where the mechanism has one.
    """
    from . import registry

    if scheme == "pipe":
        from .transports.pipe import pipe

        r, w = pipe(**options)
        pair: tuple[Channel, Channel] = (w, r)
    else:
        pair = registry.load(scheme).test_pair(unique_name(scheme), **options)
    try:
        yield pair
    finally:
        # receiver first: the sender is the creator and removes the object
        for ch in reversed(pair):
            ch.close()


class Child:
    """A real child process running ``python -c code``; lines on stdout are its protocol."""

    def __init__(self, code: str, *args: str, env: dict[str, str] | None = None,
                 pass_fds: Sequence[int] = (), stdin: bool = False, cwd: str | None = None) -> None:
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [PYTHON, "-c", code, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=full_env, pass_fds=tuple(pass_fds), cwd=cwd,
        )
        assert self.proc.stdout is not None
        self._buf = b""
        self.lines_seen: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float = 10.0) -> str:
        """The next stdout line (without newline); AssertionError with stderr on deadline or EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"child {self.pid}: no line within {timeout} s; stderr:\n{self.stderr_now()}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise AssertionError(
                        f"child {self.pid} exited ({self.proc.returncode}) before a full line; "
                        f"partial={self._buf!r}\nstderr:\n{self.stderr_now()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode(errors="replace")
        self.lines_seen.append(text)
        return text

    def expect(self, expected: str, timeout: float = 10.0) -> str:
        """Read lines until one starts with ``expected`` (returns it)."""
        end = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.01, end - time.monotonic()))
            if line.startswith(expected):
                return line

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def stderr_now(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child {self.pid} did not exit within {timeout} s") from None

    def check(self, timeout: float = 10.0) -> None:
        """Wait and assert exit status 0 (stderr in the message otherwise)."""
        rc = self.wait(timeout)
        if rc != 0:
            raise AssertionError(f"child {self.pid} exited {rc}; stderr:\n{self.stderr_now()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn(code: str, *args: str, ready: bool = True, timeout: float = 20.0, **kw: Any) -> Child:
    """Start a child; with ``ready=True`` wait (up to ``timeout``) for it to print ``READY``."""
    child = Child(code, *args, **kw)
    if ready:
        try:
            child.expect("READY", timeout)
        except BaseException:
            child.close()
            raise
    return child


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
    """A real ``nats-server -js`` on a free loopback port (context manager); see kipc._nats_testing."""
    from ._nats_testing import nats_server as _impl

    return _impl(**kwargs)


def nats_cluster(**kwargs: Any) -> Any:
    """A 3-node NATS cluster on loopback ports (context manager); see kipc._nats_testing."""
    from ._nats_testing import nats_cluster as _impl

    return _impl(**kwargs)
