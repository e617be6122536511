"""Reliability campaign, named objects: gc after mass owner death, umask, squatting, spoofed signals.

Short counts in ``make test``; ``make reliability`` (KIPC_RELIABILITY=full) runs the long ones.
Objects of another uid are made by children that drop to uid 65534 (nobody); that needs
root, which the suite runs as here (a non-root run fails those tests and says why, never skips).

The gc and umask tests give kipc a private runtime directory (``KIPC_RUNTIME_DIR``,
inherited by the children): ``kipc gc`` then sees only this test's owner records, so
tests running at the same time on this machine cannot collect ours or be collected by us.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import posix_ipc
import pytest
import sysv_ipc

import kipc
from kipc import _naming, _objects, _owners, admin, testing
from kipc.cli.main import main

from ..helpers import REPO

ROOT = REPO
NOBODY = 65534

# Imports everything a nobody child needs first: after setuid it may not read root's Python install.
DROP = """
import kipc, kipc.shm, kipc.sync.semaphore, kipc.sync.signals, kipc.transports.ring, kipc.transports.posixmq
import kipc.transports.sysvmq, kipc.transports.fifo, kipc.transports.unix, kipc.transports.file
import kipc._platform; kipc._platform.native("_sig")
os.setgroups([]); os.setgid(65534); os.setuid(65534)
"""


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to create objects as uid 65534 (setuid in a child); "
                    "run the suite as root or in a container", pytrace=False)


@pytest.fixture
def private_runtime(kipc_namespace: str) -> Iterator[str]:
    """A fresh runtime dir for kipc in this process and its children (checked empty, then removed)."""
    path = f"/tmp/{kipc_namespace}-rt"
    old = os.environ.get("KIPC_RUNTIME_DIR")
    os.environ["KIPC_RUNTIME_DIR"] = path
    _naming._runtime_cache.clear()
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("KIPC_RUNTIME_DIR", None)
        else:
            os.environ["KIPC_RUNTIME_DIR"] = old
        _naming._runtime_cache.clear()
        left = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
        shutil.rmtree(path, ignore_errors=True)
        assert not left, f"objects left in the private runtime dir: {left}"


# -------------------------------------------------------------------------- where objects are
def _sysv_row(kind: str, key: int) -> dict[str, int] | None:
    for row in _objects.sysv_rows(kind):
        if row["key"] == key:
            return row
    return None


def _posixmq_exists(name: str) -> bool:
    try:
        posix_ipc.MessageQueue("/" + name).close()
        return True
    except posix_ipc.ExistentialError:
        return False


def exists(kind: str, url: str) -> bool:
    """Is the object ``url`` of ``kind`` still there (checked at the kernel / filesystem)?"""
    _, what = admin.locate(url.split("?")[0])
    if kind in ("sysvmq", "sysvshm", "sysvsem"):
        return _sysv_row({"sysvmq": "msg", "sysvshm": "shm", "sysvsem": "sem"}[kind], what) is not None
    if kind == "posixmq":
        return _posixmq_exists(what)
    if kind == "ring":
        return os.path.lexists(f"/dev/shm/kipc.ring.{what}")
    if kind == "posixshm":
        return os.path.lexists(f"/dev/shm/{what}")
    if kind == "posixsem":
        return os.path.lexists(f"/dev/shm/sem.{what}")
    return os.path.lexists(what)  # fifo, unix, file: a path


# kind -> (constructor, url template); one owner process per object
MIXED: list[tuple[str, str, str]] = [
    ("ring", "open", "ring://{n}?capacity=65536"),
    ("posixmq", "open", "posixmq://{n}?max_messages=2&max_message_size=128"),  # RLIMIT_MSGQUEUE: keep them small
    ("sysvmq", "open", "sysvmq://{k}"),
    ("sysvshm", "shm", "sysv://{k}"),
    ("posixshm", "shm", "posix://{n}"),
    ("sysvsem", "sem", "sysv://{k}"),
    ("posixsem", "sem", "posix://{n}"),
    ("fifo", "open", "fifo://{n}"),
    ("unix", "listen", "unix://{n}"),
    ("file", "open", "file://{n}"),
]

OWNER = r"""
import sys, kipc
how, url = sys.argv[1], sys.argv[2]
obj = {"open": lambda: kipc.open(url, create=True), "listen": lambda: kipc.listen(url),
       "shm": lambda: kipc.SharedMemory(url, create=True, size=4096),
       "sem": lambda: kipc.Semaphore(url, create=True)}[how]()
print("READY", flush=True)
sys.stdin.readline()
obj.close()
print("CLOSED", flush=True)
"""

FOREIGN_OWNER = "import os, sys\n" + DROP + r"""
ring = kipc.open(f"ring://{sys.argv[1]}?capacity=65536", create=True)
q = kipc.open(f"sysvmq://{sys.argv[2]}", create=True)
print("READY", flush=True)
sys.stdin.readline()
"""

NON_KIPC = r"""
import sys, posix_ipc, sysv_ipc
posix_ipc.SharedMemory("/" + sys.argv[1], posix_ipc.O_CREX, 0o600, 4096)
sysv_ipc.MessageQueue(int(sys.argv[2]), sysv_ipc.IPC_CREX, 0o600)
print("READY", flush=True)
sys.stdin.readline()
"""


def _url(template: str) -> str:
    return template.format(n=testing.unique_name("g"), k=testing.unique_key())


def _start(code: str, *args: str, **kw: Any) -> testing.Child:
    return testing.Child(code, *args, stdin=True, **kw)


def test_gc_after_mass_owner_death(private_runtime: str, scale: Any, figures: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """owners of mixed objects SIGKILLed, then kipc gc: dead leftovers 0, live/foreign/non-kipc kept"""
    _need_root()
    owners = scale.n(20, 100)
    ns = testing.namespace()
    dead = [(MIXED[i % len(MIXED)][0], MIXED[i % len(MIXED)][1], _url(MIXED[i % len(MIXED)][2]))
            for i in range(owners)]
    live = [(kind, how, _url(t)) for kind, how, t in MIXED]
    foreign_ring, foreign_key = f"{ns}-foreign", testing.unique_key()
    raw_shm, raw_key = f"{ns}-raw", testing.unique_key()
    foreign_rt = f"/tmp/{ns}-nobody"
    children: list[testing.Child] = []
    try:
        # start everyone at once (a loaded 2-core box), then wait for each READY
        dead_kids = [_start(OWNER, how, url) for _, how, url in dead]
        live_kids = [_start(OWNER, how, url) for _, how, url in live]
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        env["KIPC_RUNTIME_DIR"] = foreign_rt
        foreign = testing.Child(FOREIGN_OWNER, foreign_ring, str(foreign_key), stdin=True, env=env)
        raw = _start(NON_KIPC, raw_shm, str(raw_key))
        children = [*dead_kids, *live_kids, foreign, raw]
        for c in children:
            c.expect("READY", timeout=60)
        for c in [*dead_kids, foreign, raw]:  # the foreign and non-kipc creators die too
            c.kill()
        assert all(exists(kind, url) for kind, _, url in dead)

        t0 = time.monotonic()
        capsys.readouterr()
        assert main(["gc", "--json"]) == 0
        gc_s = time.monotonic() - t0
        removed = json.loads(capsys.readouterr().out)["removed"]
        assert main(["gc", "--json"]) == 0  # a second pass finds nothing more
        again = json.loads(capsys.readouterr().out)["removed"]

        leftovers = [url for kind, _, url in dead if exists(kind, url)]
        records_left = [r.url for r in _owners.records() if not r.alive]
        live_gone = [url for kind, _, url in live if not exists(kind, url)]
        foreign_gone = [u for k, u in (("ring", f"ring://{foreign_ring}"), ("sysvmq", f"sysvmq://{foreign_key}"))
                        if not exists(k, u)]
        raw_gone = [u for k, u in (("posixshm", f"posix://{raw_shm}"), ("sysvmq", f"sysvmq://{raw_key}"))
                    if not exists(k, u)]
        figures.record("mixed (10 kinds)",
                       f"{owners} dead owners: removed / leftovers / dead records left",
                       f"{len(removed)} / {len(leftovers)} / {len(records_left)}", target=f"{owners} / 0 / 0")
        figures.record("mixed (10 kinds)", "live / foreign (uid 65534) / non-kipc objects removed",
                       f"{len(live_gone)} / {len(foreign_gone)} / {len(raw_gone)}", target="0 / 0 / 0")
        figures.record("mixed (10 kinds)", "gc wall time (s)", f"{gc_s:.2f}")
        assert not leftovers, leftovers
        assert not records_left, records_left
        assert len(removed) == owners and again == [], (len(removed), again)
        assert not live_gone and not foreign_gone and not raw_gone, (live_gone, foreign_gone, raw_gone)

        for c in live_kids:  # live owners clean up after themselves
            c.write("\n")
            c.expect("CLOSED", timeout=20)
            c.check()
        assert not [url for kind, _, url in live if exists(kind, url)]
    finally:
        for c in children:
            c.close()
        # what this test made outside kipc's own cleanup: the foreign and raw objects
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/kipc.ring.{foreign_ring}")
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory("/" + raw_shm)
        for key in (foreign_key, raw_key):
            with contextlib.suppress(sysv_ipc.ExistentialError):
                sysv_ipc.remove_message_queue(sysv_ipc.MessageQueue(key).id)
        shutil.rmtree(foreign_rt, ignore_errors=True)
        for kind, how, url in dead + live:  # only if the test failed half way
            if exists(kind, url):
                with contextlib.suppress(kipc.KipcError):
                    kipc.remove(url.split("?")[0], kind={"shm": "shm", "sem": "sem"}.get(how))


# -------------------------------------------------------------------------- umask 000
def _proc_perms(kind: str, key: int) -> int:
    row = _sysv_row(kind, key)
    assert row is not None
    return row["perms"] & 0o777


def test_umask_000_gives_no_group_or_other_bits(private_runtime: str, figures: Any) -> None:
    """every object type created under umask 000 has no group/other bits"""
    name = testing.unique_name("u")
    k_mq, k_shm, k_sem = testing.unique_key(), testing.unique_key(), testing.unique_key()
    modes: dict[str, int] = {}
    old = os.umask(0)
    try:
        with contextlib.ExitStack() as stack:
            enter = stack.enter_context
            fifo = enter(kipc.open(f"fifo://{name}", create=True))
            lst = enter(kipc.listen(f"unix://{name}"))
            spool = enter(kipc.open(f"file://{name}", create=True))
            spool.send(b"queued")
            ring = enter(kipc.open(f"ring://{name}?capacity=65536", create=True))
            pmq = enter(kipc.open(f"posixmq://{name}?max_messages=2&max_message_size=128", create=True))
            enter(kipc.open(f"sysvmq://{k_mq}", create=True))
            enter(kipc.SharedMemory(f"sysv://{k_shm}", create=True, size=4096))
            enter(kipc.SharedMemory(f"posix://{name}", create=True, size=4096))
            enter(contextlib.closing(kipc.Semaphore(f"sysv://{k_sem}", create=True)))
            enter(contextlib.closing(kipc.Semaphore(f"posix://{name}", create=True)))

            def m(path: str) -> int:
                return stat.S_IMODE(os.lstat(path).st_mode)

            modes["fifo"] = m(fifo._path or "")
            modes["unix socket"] = m(lst._path or "")
            modes["unix socket dir"] = m(os.path.dirname(lst._path or ""))
            spool_dir = spool._path
            modes["file spool dir"] = m(spool_dir)
            modes["file spool claimed/"] = m(os.path.join(spool_dir, "claimed"))
            msgs = [f for f in os.listdir(spool_dir) if f.endswith(".msg")]
            assert msgs
            modes["file spool message"] = max(m(os.path.join(spool_dir, f)) for f in msgs)
            modes["ring shm"] = m(ring.path)
            modes["posixmq (fstat of the mqd)"] = stat.S_IMODE(os.fstat(pmq._q.mqd).st_mode)
            modes["sysvmq"] = _proc_perms("msg", k_mq)
            modes["sysv shm"] = _proc_perms("shm", k_shm)
            modes["sysv sem"] = _proc_perms("sem", k_sem)
            modes["posix shm"] = m(f"/dev/shm/{name}")
            modes["posix sem"] = m(f"/dev/shm/sem.{name}")
            objects = _naming.runtime_dir("objects")
            recs = [os.path.join(objects, f) for f in os.listdir(objects)]
            assert len(recs) >= 10, recs
            modes["owner records"] = max(m(p) for p in recs)
            modes["owner records dir"] = m(objects)
            modes["runtime dir"] = m(private_runtime)
            for sub in ("fifo", "sock", "spool"):
                modes[f"runtime dir {sub}/"] = m(os.path.join(private_runtime, sub))
    finally:
        os.umask(old)
    for what, mode in modes.items():
        figures.record(what, "mode under umask 000", f"{mode:04o}", target="no group/other bits")
    wide = {w: f"{md:04o}" for w, md in modes.items() if md & 0o077}
    assert not wide, wide


# -------------------------------------------------------------------------- squatting
# One child tries every attempt and prints a line per attempt; a crash (SIGBUS...) names the attempt.
ATTEMPTS = r"""
import json, sys, kipc
attempts = json.loads(sys.argv[1])
print("READY", flush=True)
for i, (ctor, url, kw) in enumerate(attempts):
    print("START", i, flush=True)
    try:
        make = {"open": kipc.open, "listen": kipc.listen, "shm": kipc.SharedMemory, "sem": kipc.Semaphore}[ctor]
        obj = make(url, **kw)
    except kipc.KipcError as e:
        print("REFUSED", i, type(e).__name__, str(e).replace("\n", " "), flush=True)
        continue
    except BaseException as e:
        print("OTHER", i, type(e).__name__, str(e).replace("\n", " "), flush=True)
        continue
    try:  # accepted: touch it, so that a squat that would crash later crashes now
        if ctor == "sem":
            obj.value
        elif ctor == "shm":
            obj.buf[0]
    finally:
        print("ACCEPTED", i, flush=True)
        obj.close()
"""

SQUATTER = "import os, sys, time\n" + DROP + r"""
import posix_ipc, sysv_ipc
ns, kmq, kshm, ksem = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kipc.open(f"ring://{ns}-ruid?capacity=65536", create=True, persist=True).close()
posix_ipc.SharedMemory(f"/{ns}-shmuid", posix_ipc.O_CREX, 0o600, 4096).close_fd()
posix_ipc.MessageQueue(f"/{ns}-mquid", posix_ipc.O_CREX, 0o600, 2, 128).close()
posix_ipc.Semaphore(f"/{ns}-semuid", posix_ipc.O_CREX, 0o600, 1).close()
sysv_ipc.MessageQueue(kmq, sysv_ipc.IPC_CREX, 0o600)
sysv_ipc.SharedMemory(kshm, sysv_ipc.IPC_CREX, 0o600, 4096).detach()
sysv_ipc.Semaphore(ksem, sysv_ipc.IPC_CREX, 0o600, 1)
os.mkfifo(f"/tmp/{ns}-fifouid", 0o600)
os.mkdir(f"/tmp/{ns}-spooluid", 0o700)
lst = kipc.listen(f"unix:///tmp/{ns}-sockuid", allow_uids=[0])
print("READY", flush=True)
sys.stdin.readline()
lst.close()
"""


def _fingerprint(kind: str, where: Any) -> Any:
    """Everything that would show the squatted object was touched."""
    if kind in ("msg", "shm", "sem"):
        row = _sysv_row(kind, where)
        return row and {k: v for k, v in row.items() if k not in ("atime", "dtime", "otime", "rtime", "stime",
                                                                   "ctime", "lrpid", "lspid", "lpid", "nattch")}
    if kind == "mq":
        mq = posix_ipc.MessageQueue(where)
        try:
            st = os.fstat(mq.mqd)
            return st.st_uid, st.st_mode, mq.current_messages
        finally:
            mq.close()
    st = os.lstat(where)
    fp: list[Any] = [st.st_ino, st.st_mode, st.st_uid, st.st_size]
    if stat.S_ISREG(st.st_mode):
        with open(where, "rb") as f:
            fp.append(hashlib.sha256(f.read()).hexdigest())
    elif stat.S_ISDIR(st.st_mode):
        fp.append(sorted(os.listdir(where)))
    return fp


class Squats:
    """Pre-created objects at kipc names and the open attempts that must all be refused."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.cases: list[tuple[str, str, str, str, dict[str, Any], Any]] = []
        self.cleanup: list[Callable[[], None]] = []

    def add(self, mech: str, attack: str, ctor: str, url: str, fp: tuple[str, Any],
            variants: list[dict[str, Any]]) -> None:
        for kw in variants:
            self.cases.append((mech, attack, ctor, url, kw, fp))

    def file(self, path: str, data: bytes = b"", mode: int = 0o600) -> str:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.close(fd)
        self.cleanup.append(lambda: os.unlink(path))
        return path

    def link(self, path: str, target: str) -> str:
        os.symlink(target, path)
        self.cleanup.append(lambda: os.unlink(path))
        return path


def _attach_variants(extra: dict[str, Any] | None = None, create: dict[str, Any] | None = None) -> list[dict]:
    e = extra or {}
    c = {**e, **(create or {})}
    return [dict(e), {**c, "create": "if_missing"}, {**c, "create": True}]


def test_squatted_names_are_refused(figures: Any) -> None:
    """squatting (0-byte file, wrong magic, symlink, wider mode, another uid) refused, squat untouched"""
    _need_root()
    ns = testing.namespace()
    sq = Squats(ns)
    k = {n: testing.unique_key() for n in ("mq", "shm", "sem", "mq666", "shm666", "sem666")}
    shm_v = _attach_variants(create={"size": 4096})
    sem_v = _attach_variants()
    squatter = testing.spawn(SQUATTER, ns, str(k["mq"]), str(k["shm"]), str(k["sem"]), stdin=True, timeout=30)
    try:
        target = sq.file(f"/tmp/{ns}-target", b"precious")
        tdir = f"/tmp/{ns}-tdir"
        os.mkdir(tdir, 0o700)
        sq.cleanup.append(lambda: os.rmdir(tdir))
        # ring://
        for attack, path in (("0-byte file", sq.file(f"/dev/shm/kipc.ring.{ns}-r0")),
                             ("wrong magic", sq.file(f"/dev/shm/kipc.ring.{ns}-rmagic", os.urandom(3 * 4096))),
                             ("symlink", sq.link(f"/dev/shm/kipc.ring.{ns}-rlink", target)),
                             ("another uid", f"/dev/shm/kipc.ring.{ns}-ruid")):
            sq.add("ring", attack, "open", f"ring://{path.rsplit('kipc.ring.', 1)[1]}", ("path", path),
                   _attach_variants())
        wide = kipc.open(f"ring://{ns}-r666?capacity=65536", create=True, mode=0o666, persist=True)
        wide.close()
        sq.cleanup.append(lambda: os.unlink(f"/dev/shm/kipc.ring.{ns}-r666"))
        sq.add("ring", "wider mode (0666)", "open", f"ring://{ns}-r666", ("path", f"/dev/shm/kipc.ring.{ns}-r666"),
               _attach_variants())
        # posix:// SharedMemory and Semaphore: /dev/shm/NAME and /dev/shm/sem.NAME
        for mech, ctor, prefix, variants in (("posix shm", "shm", "", shm_v), ("posix sem", "sem", "sem.", sem_v)):
            for attack, path in (("0-byte file", sq.file(f"/dev/shm/{prefix}{ns}-{ctor}0")),
                                 ("short file", sq.file(f"/dev/shm/{prefix}{ns}-{ctor}short", b"\0" * 8)),
                                 ("symlink", sq.link(f"/dev/shm/{prefix}{ns}-{ctor}link", target)),
                                 ("wider mode (0666)", sq.file(f"/dev/shm/{prefix}{ns}-{ctor}666", bytes(4096),
                                                               0o666)),
                                 ("another uid", f"/dev/shm/{prefix}{ns}-{ctor}uid")):
                if mech == "posix shm" and attack == "short file":
                    continue  # a short segment is a valid segment (size= asks for a minimum: tested below)
                sq.add(mech, attack, ctor, f"posix://{path.rsplit('/', 1)[1][len(prefix):]}", ("path", path), variants)
        sq.add("posix shm", "smaller than size=", "shm", f"posix://{ns}-shm666x",
               ("path", sq.file(f"/dev/shm/{ns}-shm666x", bytes(64))), [{"size": 4096}])
        # fifo://, unix://, file:// at absolute paths (where another user can plant things)
        real_fifo = f"/tmp/{ns}-realfifo"
        os.mkfifo(real_fifo, 0o600)
        sq.cleanup.append(lambda: os.unlink(real_fifo))
        fifo666 = f"/tmp/{ns}-fifo666"
        os.mkfifo(fifo666)
        os.chmod(fifo666, 0o666)
        sq.cleanup.append(lambda: os.unlink(fifo666))
        for attack, path in (("0-byte file", sq.file(f"/tmp/{ns}-fifo0")),
                             ("symlink", sq.link(f"/tmp/{ns}-fifolink", real_fifo)),
                             ("wider mode (0666)", fifo666), ("another uid", f"/tmp/{ns}-fifouid")):
            for kw in ({"timeout": 0.2}, {"direction": "recv"}, {"create": "if_missing"}, {"create": True}):
                sq.add("fifo", attack, "open", f"fifo://{path}", ("path", path), [kw])
        for attack, path in (("0-byte file", sq.file(f"/tmp/{ns}-sock0")),
                             ("symlink", sq.link(f"/tmp/{ns}-socklink", target)),
                             ("another uid (live listener)", f"/tmp/{ns}-sockuid")):
            sq.add("unix", attack, "listen", f"unix://{path}", ("path", path), [{}])
            sq.add("unix", attack, "open", f"unix://{path}", ("path", path), [{"timeout": 2}])
        spool666 = f"/tmp/{ns}-spool666"
        os.mkdir(spool666)
        os.chmod(spool666, 0o777)
        sq.cleanup.append(lambda: os.rmdir(spool666))
        for attack, path in (("0-byte file", sq.file(f"/tmp/{ns}-spool0")),
                             ("symlink", sq.link(f"/tmp/{ns}-spoollink", tdir)),
                             ("wider mode (0777)", spool666), ("another uid", f"/tmp/{ns}-spooluid")):
            sq.add("file", attack, "open", f"file://{path}", ("path", path), _attach_variants())
        # kernel-named objects: posixmq, sysvmq, SysV shm/sem (no paths: wider mode and another uid)
        q = posix_ipc.MessageQueue(f"/{ns}-mq666", posix_ipc.O_CREX, 0o666, 2, 128)
        os.fchmod(q.mqd, 0o666)
        q.close()
        sq.cleanup.append(lambda: posix_ipc.unlink_message_queue(f"/{ns}-mq666"))
        for attack, name in (("wider mode (0666)", f"{ns}-mq666"), ("another uid", f"{ns}-mquid")):
            sq.add("posixmq", attack, "open", f"posixmq://{name}", ("mq", f"/{name}"), _attach_variants())
        for key_name, mk in (("mq666", lambda kk: sysv_ipc.MessageQueue(kk, sysv_ipc.IPC_CREX, 0o666)),
                             ("shm666", lambda kk: sysv_ipc.SharedMemory(kk, sysv_ipc.IPC_CREX, 0o666, 4096)),
                             ("sem666", lambda kk: sysv_ipc.Semaphore(kk, sysv_ipc.IPC_CREX, 0o666, 1))):
            obj = mk(k[key_name])
            sq.cleanup.append(obj.remove)
            if hasattr(obj, "detach"):
                obj.detach()
        for mech, ctor, kind, variants in (("sysvmq", "open", "msg", _attach_variants()),
                                           ("sysv shm", "shm", "shm", shm_v), ("sysv sem", "sem", "sem", sem_v)):
            scheme = "sysvmq" if ctor == "open" else "sysv"
            for attack, key in (("wider mode (0666)", k[f"{kind}666" if kind != "msg" else "mq666"]),
                                ("another uid", k[kind if kind != "msg" else "mq"])):
                sq.add(mech, attack, ctor, f"{scheme}://{key}", (kind, key), variants)

        before = [_fingerprint(*fp) for *_, fp in sq.cases]
        attempts = [(ctor, url, kw) for _, _, ctor, url, kw, _ in sq.cases]
        results: dict[int, str] = {}
        with testing.spawn(ATTEMPTS, json.dumps(attempts), timeout=30) as child:
            current = -1
            try:
                while len(results) < len(attempts):
                    line = child.readline(timeout=30)
                    word, _, rest = line.partition(" ")
                    if word == "START":
                        current = int(rest)
                    else:
                        idx, _, text = rest.partition(" ")
                        results[int(idx)] = f"{word} {text}"
                child.check()
            except AssertionError as e:
                mech, attack, ctor, url, kw, _ = sq.cases[current]
                raise AssertionError(f"the opener died during {mech} / {attack}: {ctor}({url}, {kw}): {e}") from None
        after = [_fingerprint(*fp) for *_, fp in sq.cases]
    finally:
        squatter.write("\n")
        squatter.check(timeout=20)
        squatter.close()
        _remove_squatter_objects(ns, k)
        for undo in reversed(sq.cleanup):
            with contextlib.suppress(OSError, posix_ipc.ExistentialError, sysv_ipc.ExistentialError):
                undo()

    bad: list[str] = []
    per: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i, (mech, attack, ctor, url, kw, _) in enumerate(sq.cases):
        res = results[i]
        outcome = res.split()[1] if res.startswith("REFUSED") else res.split()[0]
        per.setdefault((mech, attack), []).append((_variant(ctor, url, kw), outcome))
        # a clear error: a kipc error that says what is wrong (a subclass, not the bare KipcError)
        if not res.startswith("REFUSED") or outcome == "KipcError":
            bad.append(f"{mech} / {attack}: {ctor}({url}, {kw}) -> {res}")
        if before[i] != after[i]:
            bad.append(f"{mech} / {attack}: the squatted object changed: {before[i]} -> {after[i]}")
    for (mech, attack), outcomes in per.items():
        figures.record(mech, f"squat: {attack} -> error ({' / '.join(v for v, _ in outcomes)})",
                       " / ".join(o for _, o in outcomes), target="kipc error, object untouched")
    assert not bad, "\n".join(bad)


def _variant(ctor: str, url: str, kw: dict[str, Any]) -> str:
    if "create" in kw:
        return "create" if kw["create"] is True else "if_missing"
    if ctor == "listen" or url.startswith("unix:"):
        return "listen" if ctor == "listen" else "connect"
    return "open recv" if kw.get("direction") == "recv" else "open"


def _remove_squatter_objects(ns: str, k: dict[str, int]) -> None:
    for path in (f"/dev/shm/kipc.ring.{ns}-ruid", f"/dev/shm/{ns}-shmuid", f"/dev/shm/sem.{ns}-semuid",
                 f"/tmp/{ns}-fifouid", f"/tmp/{ns}-sockuid"):
        with contextlib.suppress(OSError):
            os.unlink(path)
    shutil.rmtree(f"/tmp/{ns}-spooluid", ignore_errors=True)
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_message_queue(f"/{ns}-mquid")
    for kind, key in (("msg", k["mq"]), ("shm", k["shm"]), ("sem", k["sem"])):
        row = _sysv_row(kind, key)
        if row is not None:
            rm = {"msg": sysv_ipc.remove_message_queue, "shm": sysv_ipc.remove_shared_memory,
                  "sem": sysv_ipc.remove_semaphore}[kind]
            with contextlib.suppress(sysv_ipc.ExistentialError):
                rm(row[{"msg": "msqid", "shm": "shmid", "sem": "semid"}[kind]])


# -------------------------------------------------------------------------- spoofed signals
# tests/mechanisms/test_signals.py covers os.kill (SI_USER) from our own uid; here: other uids and other si_codes.
SIG_RECEIVER = "import os, sys\n" + DROP.replace("os.setgroups", "if sys.argv[1] == 'nobody': os.setgroups") + r"""
import json, signal
from kipc import signals
r = signals.Receiver(signal.SIGRTMIN)
print("READY", os.getpid(), os.getuid(), flush=True)
sys.stdin.readline()  # every signal is pending (blocked, queued) before we read
got = []
while True:
    try:
        info = r.recv(timeout=0.3)
    except kipc.DeadlineExceeded:
        break
    got.append([info.value, info.uid, info.code])
print("END", r.dropped, json.dumps(got), flush=True)
"""

# rt_sigqueueinfo / tgkill from another process: what an attacker would use to fake si_code or si_uid.
SPOOFER = r"""
import ctypes, os, signal, struct, sys
import kipc, kipc.sync.signals, kipc._platform
from kipc import signals
kipc._platform.native("_sig")
libc = ctypes.CDLL(None, use_errno=True)
pid, how = int(sys.argv[1]), sys.argv[2]
if how == "ruid":  # real uid nobody, effective root: glibc's sigqueue reports si_uid = getuid() = 65534
    os.setresuid(65534, 0, 0)
    signals.send(pid, 2)
elif how == "nobody":  # fully nobody
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    signals.send(pid, 1)
elif how == "mesgq":  # a negative si_code other than SI_QUEUE (SI_MESGQ = -3), uid = the receiver's
    info = bytearray(128)
    struct.pack_into("iiiIIi", info, 0, signal.SIGRTMIN, 0, -3, os.getpid(), int(sys.argv[3]), 4)
    buf = ctypes.create_string_buffer(bytes(info), 128)
    rc = libc.syscall(129, pid, int(signal.SIGRTMIN), buf)  # SYS_rt_sigqueueinfo (x86_64)
    assert rc == 0, ctypes.get_errno()
elif how == "tgkill":  # SI_TKILL (-6)
    rc = libc.syscall(234, pid, pid, int(signal.SIGRTMIN))  # SYS_tgkill (x86_64)
    assert rc == 0, ctypes.get_errno()
print("SENT", flush=True)
"""


def test_spoofed_signals_are_ignored(figures: Any) -> None:
    """sigqueue from another uid, or with si_code != SI_QUEUE, ignored by a default Receiver"""
    _need_root()
    import platform

    if platform.machine() != "x86_64":
        pytest.fail("the raw syscall numbers in this test are x86_64's; add this machine's", pytrace=False)
    from kipc import signals

    outcomes: dict[str, str] = {}
    # 1) receiver runs as nobody; root (another uid, allowed to signal anyone) sigqueues; nobody then
    #    sends one legitimately (the control: a same-uid SI_QUEUE must arrive)
    with testing.spawn(SIG_RECEIVER, "nobody", stdin=True) as rx:
        pid = rx.pid
        signals.send(pid, 99)  # uid 0 -> uid 65534
        for how, extra in (("mesgq", [str(NOBODY)]), ("tgkill", [])):
            with testing.spawn(SPOOFER, str(pid), how, *extra, ready=False) as s:
                s.expect("SENT")
                s.check()
        os.kill(pid, signal.SIGRTMIN)  # SI_USER from root
        with testing.spawn(SPOOFER, str(pid), "nobody", ready=False) as s:
            s.expect("SENT")
            s.check()
        rx.write("\n")
        end = rx.expect("END", timeout=20)
        rx.check()
    dropped, got = int(end.split()[1]), json.loads(end.split(" ", 2)[2])
    outcomes["receiver uid 65534"] = f"dropped {dropped} of 4 (root sigqueue, SI_MESGQ, SI_TKILL, SI_USER)"
    assert got == [[1, NOBODY, signals.SI_QUEUE]], got
    assert dropped == 4, dropped
    # 2) receiver runs as root; the sender's real uid is nobody (effective root, so the kernel lets it through)
    with testing.spawn(SIG_RECEIVER, "root", stdin=True) as rx:
        with testing.spawn(SPOOFER, str(rx.pid), "ruid", ready=False) as s:
            s.expect("SENT")
            s.check()
        rx.write("\n")
        end = rx.expect("END", timeout=20)
        rx.check()
    dropped2, got2 = int(end.split()[1]), json.loads(end.split(" ", 2)[2])
    outcomes["receiver uid 0"] = f"dropped {dropped2} of 1 (sigqueue with real uid 65534)"
    assert got2 == [] and dropped2 == 1, (got2, dropped2)
    for who, text in outcomes.items():
        figures.record("signals", f"spoofed/foreign signals, {who}", text, target="all dropped, control received")
