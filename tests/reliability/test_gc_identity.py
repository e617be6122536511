"""``kipc gc`` by identity: a dead owner's record never removes a live object that reuses the name.

Owners are real ``python -c`` children SIGKILLed after READY; the objects that
reuse their names are made by a C program (compiled here), a hand-made file,
a ``persist=True`` ring and a user's own directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
import sysv_ipc

import kipc
from kipc import _owners, admin, registry
from kipc._kinds import ObjectInfo, PathKind
from kipc._naming import runtime_dir
from kipc.cli.main import main
from kipc.testing import Child, spawn, unique_key, unique_name

from ..conftest import Figures
from ..helpers import build_c

HOSTILE = "Hostile peers and odd objects"

# Creates each URL given (create=True), prints READY and waits to be killed.
OWNER = """
import sys, kipc
objs = [kipc.open(u, create=True) for u in sys.argv[1:]]
for o in objs:
    if o.url.startswith("file:"):
        o.send(b"a message of the dead owner")
print("READY", flush=True)
sys.stdin.readline()
"""

C_QUEUE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/msg.h>
int main(int argc, char **argv) {
    int id = msgget((key_t)strtol(argv[1], NULL, 0), IPC_CREAT | IPC_EXCL | 0600);
    if (id < 0) { perror("msgget"); return 1; }
    printf("READY %d\n", id);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_queue(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_c(str(tmp_path_factory.mktemp("cq")), C_QUEUE, "q")


def _dead_owner(*urls: str) -> None:
    """Create ``urls`` in a child and SIGKILL it: its objects and records stay behind."""
    child = spawn(OWNER, *urls, stdin=True)
    child.close()  # SIGKILL + reap


def _gc(capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["gc", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _urls(rows: list[dict]) -> set[str]:
    return {r["url"] for r in rows}


def test_c_queue_on_a_dead_owners_key_survives_gc(c_queue: str, capsys: pytest.CaptureFixture[str],
                                                   figures: Figures) -> None:
    """a dead owner's SysV key reused by a C program's queue: kipc gc removes nothing live"""
    key = unique_key()
    url = f"sysvmq://{key}"
    _dead_owner(url)
    sysv_ipc.remove_message_queue(sysv_ipc.MessageQueue(key).id)  # the dead owner's queue goes (ipcrm)
    out = subprocess.run([c_queue, str(key)], capture_output=True, text=True, timeout=20, check=True).stdout
    c_id = int(out.split()[1])
    try:
        report = _gc(capsys)
        assert sysv_ipc.MessageQueue(key).id == c_id  # the C program's queue is still there
        assert url not in _urls(report["removed"])
        assert url in _urls(report["dropped"]) and _owners.lookup(url) is None
        figures.record("sysvmq", "dead owner's key reused by a C queue: live objects removed by gc", "0",
                       target="0", section=HOSTILE)
    finally:
        sysv_ipc.remove_message_queue(c_id)


def test_ring_names_reused_by_a_hand_made_object_or_a_persist_ring(capsys: pytest.CaptureFixture[str],
                                                                   figures: Figures) -> None:
    """a dead owner's ring name reused (hand-made /dev/shm file, persist=True ring, new ring): gc removes none"""
    hand, kept, fresh = unique_name("hand"), unique_name("kept"), unique_name("fresh")
    _dead_owner(f"ring://{hand}", f"ring://{kept}", f"ring://{fresh}")
    for name in (hand, kept, fresh):
        os.unlink(f"/dev/shm/kipc.ring.{name}")  # the dead owner's objects go; their records stay
    fd = os.open(f"/dev/shm/kipc.ring.{hand}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        assert _owners.lookup(f"ring://{kept}") is not None
        with kipc.open(f"ring://{kept}", create=True, persist=True) as ring:
            ring.send(b"keep me")
            # persist=True keeps no record, and drops the dead owner's stale one at creation
            assert _owners.lookup(f"ring://{kept}") is None
        with kipc.open(f"ring://{fresh}", create=True) as new_ring:  # a new ring of a live owner
            report = _gc(capsys)
            assert os.path.exists(f"/dev/shm/kipc.ring.{fresh}") and not new_ring.closed
            assert f"ring://{fresh}" not in _urls(report["removed"])
        assert os.path.exists(f"/dev/shm/kipc.ring.{hand}") and os.path.exists(f"/dev/shm/kipc.ring.{kept}")
        assert not {f"ring://{hand}", f"ring://{kept}"} & _urls(report["removed"])
        assert f"ring://{hand}" in _urls(report["dropped"])
        with kipc.open(f"ring://{kept}") as ring:
            assert ring.recv(timeout=5) == b"keep me"
        figures.record("ring", "dead owner's name reused (hand-made file, persist=True ring, new ring): "
                       "removed by gc", "0 of 3", target="0", section=HOSTILE)
    finally:
        for name in (hand, kept, fresh):
            if os.path.exists(f"/dev/shm/kipc.ring.{name}"):
                os.unlink(f"/dev/shm/kipc.ring.{name}")


def test_gc_never_deletes_a_users_directory_tree(capsys: pytest.CaptureFixture[str], figures: Figures) -> None:
    """spools: a user's directory at a dead owner's spool path is untouched; in a real spool only kipc's files go"""
    replaced, shared = unique_name("replaced"), unique_name("shared")
    _dead_owner(f"file://{replaced}", f"file://{shared}")
    base = runtime_dir("spool")
    # 1. the dead owner's spool was removed; the user made a directory of their own there
    shutil.rmtree(os.path.join(base, replaced))
    os.mkdir(os.path.join(base, replaced), 0o700)
    with open(os.path.join(base, replaced, "thesis.tex"), "w") as f:
        f.write("years of work")
    # 2. the dead owner's spool itself, where the user also keeps a file and a directory
    with open(os.path.join(base, shared, "notes.txt"), "w") as f:
        f.write("mine")
    os.mkdir(os.path.join(base, shared, "photos"))
    assert any(n.endswith(".msg") for n in os.listdir(os.path.join(base, shared)))
    try:
        report = _gc(capsys)
        assert os.listdir(os.path.join(base, replaced)) == ["thesis.tex"]
        assert f"file://{replaced}" in _urls(report["dropped"])
        left = sorted(os.listdir(os.path.join(base, shared)))
        assert left == ["notes.txt", "photos"], left  # kipc's message and claimed/ went, the rest stayed
        skipped = {s["url"]: s["reason"] for s in report["skipped"]}
        assert "kipc did not put there" in skipped[f"file://{shared}"]
        figures.record("file", "user files in/at a dead owner's spool after gc: deleted",
                       f"0 of 3 (spool's own message and claimed/ removed: {int(len(left) == 2)})",
                       target="0", section=HOSTILE)
    finally:
        for name in (replaced, shared):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            _owners.forget(f"file://{name}")


def test_one_odd_entry_does_not_abort_gc(capsys: pytest.CaptureFixture[str], figures: Figures) -> None:
    """a dead owner's FIFO path now a regular file, a record of an unknown kind: gc reports them and goes on"""
    fifo, ring = unique_name("fifo"), unique_name("ring")
    _dead_owner(f"fifo://{fifo}", f"ring://{ring}")
    path = os.path.join(runtime_dir("fifo"), fifo)
    os.unlink(path)
    with open(path, "w") as f:
        f.write("a regular file now")
    # a record of a kind nothing registers (a newer kipc's, say), written by a dead process
    odd = f"toaster://{unique_name('t')}"
    with Child("import sys; from kipc import _owners; _owners.record(sys.argv[1], 'toaster'); print('READY')",
               odd) as child:
        child.expect("READY")
        child.check()
    try:
        report = _gc(capsys)
        assert f"ring://{ring}" in _urls(report["removed"])
        assert not os.path.exists(f"/dev/shm/kipc.ring.{ring}")
        dropped = {d["url"]: d["reason"] for d in report["dropped"]}
        assert "not a FIFO" in dropped[f"fifo://{fifo}"]
        with open(path) as f:
            assert f.read() == "a regular file now"
        skipped = {s["url"]: s["reason"] for s in report["skipped"]}
        assert "toaster" in skipped[odd]
        capsys.readouterr()
        assert main(["gc"]) == 0
        text = capsys.readouterr().out
        assert f"skipped toaster {odd}" in text
        figures.record("fifo", "dead owner's FIFO path now a regular file: gc exit status / other dead objects "
                       "removed / file kept", "0 / 1 of 1 / yes", target="0 / all / yes", section=HOSTILE)
    finally:
        os.unlink(path)
        _owners.forget(odd)


# -- a scheme registered at run time shows in ls / rm / gc ------------------------------------------------
class ToyKind(PathKind):
    """toy://NAME: a regular file in runtime_dir("toy")."""

    def stat(self, target: str) -> ObjectInfo | None:
        info = super().stat(target)
        if info is not None:
            info.depth = 1
        return info


TOY_OWNER = """
import os, sys
from kipc import _owners, _objects
from kipc._naming import runtime_dir
path = os.path.join(runtime_dir("toy"), sys.argv[1])
fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
_owners.record("toy://" + sys.argv[1], "toy", identity=_objects.file_identity(os.fstat(fd), fd=fd))
os.close(fd)
print("READY", flush=True)
sys.stdin.readline()
"""


def test_registered_scheme_with_a_kind_appears_in_ls_rm_gc(capsys: pytest.CaptureFixture[str]) -> None:
    saved = dict(registry._CHANNELS), {k: list(v) for k, v in registry._KINDS.items()}
    registry.register("toy", "kipc.transports.fifo:FifoChannel",
                      kind=ToyKind("toy", sub="toy", is_type=stat.S_ISREG, noun="toy file",
                                   description="toy (test scheme)"))
    dead, live = unique_name("dead"), unique_name("live")
    d, lv = spawn(TOY_OWNER, dead, stdin=True), spawn(TOY_OWNER, live, stdin=True)
    try:
        d.close()  # SIGKILL
        capsys.readouterr()
        assert main(["ls", "--json", "--kind", "toy"]) == 0
        rows = {r["url"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows[f"toy://{dead}"]["alive"] is False and rows[f"toy://{live}"]["alive"] is True
        assert rows[f"toy://{live}"]["kind"] == "toy" and rows[f"toy://{live}"]["depth"] == 1
        report = _gc(capsys)
        assert _urls(report["removed"]) == {f"toy://{dead}"}
        assert not os.path.exists(os.path.join(runtime_dir("toy"), dead))
        assert main(["rm", f"toy://{live}"]) == 0
        assert not os.path.exists(os.path.join(runtime_dir("toy"), live))
        assert _owners.lookup(f"toy://{live}") is None
    finally:
        lv.close()
        registry._CHANNELS.clear()
        registry._CHANNELS.update(saved[0])
        registry._KINDS.clear()
        registry._KINDS.update(saved[1])
        shutil.rmtree(runtime_dir("toy"), ignore_errors=True)
        for name in (dead, live):
            _owners.forget(f"toy://{name}")
    assert "toy" not in [k.name for k in admin.kinds()]
