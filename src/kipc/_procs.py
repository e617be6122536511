"""Real child processes for kipc's tools (``kipc tour``, ``kipc bench``) and tests: ``python -c`` with a READY line.

Contract card:

* :class:`Child` runs ``python -c code args...`` with piped stdout/stderr
  (stdin on request); its stdout lines are the protocol. :meth:`Child.readline`
  and :meth:`Child.expect` wait at most ``timeout`` seconds and raise
  ``AssertionError`` with the child's stderr on deadline or EOF, so a broken
  child fails the caller instead of hanging it.
* :func:`spawn` starts a child and, by default, waits for it to print ``READY``
  (the handshake: a child prints it once it has set up whatever the parent
  will use; never a sleep).
* Leaving a ``with Child(...)`` block (or :meth:`Child.close`) SIGKILLs the child
  if it still runs and reaps it.

This is not test code: the CLI uses it for its demos and benchmarks, and
:mod:`kipc.testing` re-exports it for tests.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["PYTHON", "Child", "spawn"]

PYTHON = sys.executable


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
