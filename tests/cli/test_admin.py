"""kipc.admin and ``kipc ls / rm / gc`` against real kernel objects, C programs and killed owners."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import sysv_ipc

import kipc
from kipc import admin, registry
from kipc.cli.main import main
from kipc.testing import spawn, unique_key, unique_name

from ..helpers import build_c

C_QUEUE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
struct msg { long type; char text[256]; };
int main(int argc, char **argv) {
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int id = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
    if (id < 0) { perror("msgget"); return 1; }
    struct msg m = { 5, "from C" };
    if (msgsnd(id, &m, strlen(m.text), 0) < 0) { perror("msgsnd"); return 1; }
    printf("READY %d\n", id); fflush(stdout);
    return 0;   /* the queue stays: it is not kipc's, and nothing records an owner */
}
"""


@pytest.fixture(scope="module")
def c_queue(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_c(str(tmp_path_factory.mktemp("cq")), C_QUEUE, "q")


def ls_json(*extra: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert main(["ls", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_ls_finds_c_queue_and_live_ring_then_rm(c_queue: str, capsys: pytest.CaptureFixture[str]) -> None:
    key = unique_key()
    out = subprocess.run([c_queue, str(key)], capture_output=True, text=True, timeout=20, check=True).stdout
    assert out.startswith("READY")
    ring_url = f"ring://{unique_name('ring')}"
    try:
        with kipc.open(ring_url, create=True) as ring:
            ring.send(b"one")
            rows = ls_json(capsys=capsys)
            by_url = {r["url"]: r for r in rows}
            q = by_url[f"sysvmq://{key & 0xFFFFFFFF:#x}"]
            assert q["kind"] == "sysvmq" and q["depth"] == 1 and q["size"] == len("from C")
            assert q["mode"] == "0600" and q["kipc"] is False and q["uid"] == os.geteuid()
            r = by_url[ring_url]
            assert r["kind"] == "ring" and r["kipc"] is True and r["alive"] is True
            assert r["creator_pid"] == os.getpid() and r["depth"] == 1
            # --kind filters
            kinds = {x["kind"] for x in ls_json("--kind", "ring", capsys=capsys)}
            assert kinds == {"ring"}
    finally:
        assert main(["rm", f"sysvmq://{key}"]) == 0
    assert f"sysvmq://{key & 0xFFFFFFFF:#x}" not in {x["url"] for x in ls_json(capsys=capsys)}
    assert main(["rm", f"sysvmq://{key}"]) == 1  # gone now: operational error
    assert "no SysV msg object" in capsys.readouterr().err


RING_OWNER = """
import sys, kipc
ch = kipc.open(sys.argv[1], create=True)
ch.send(b"left behind")
print("READY", flush=True)
sys.stdin.readline()
ch.close()
"""


def test_gc_removes_only_dead_owners_ring(capsys: pytest.CaptureFixture[str]) -> None:
    dead_url, live_url = f"ring://{unique_name('dead')}", f"ring://{unique_name('live')}"
    with spawn(RING_OWNER, dead_url, stdin=True) as dead, spawn(RING_OWNER, live_url, stdin=True) as live:
        dead.kill(signal.SIGKILL)
        rows = {r["url"]: r for r in ls_json(capsys=capsys)}
        assert rows[dead_url]["alive"] is False and rows[live_url]["alive"] is True
        assert main(["gc", "--dry-run", "--json"]) == 0
        would = {r["url"] for r in json.loads(capsys.readouterr().out)["removed"]}
        assert dead_url in would and live_url not in would
        assert os.path.exists(f"/dev/shm/kipc.ring.{dead_url[7:]}")  # dry run removed nothing
        assert main(["gc"]) == 0
        text = capsys.readouterr().out
        assert f"removed ring {dead_url}" in text and live_url not in text
        assert not os.path.exists(f"/dev/shm/kipc.ring.{dead_url[7:]}")
        assert os.path.exists(f"/dev/shm/kipc.ring.{live_url[7:]}")
        live.write("\n")
        live.check()
    assert not os.path.exists(f"/dev/shm/kipc.ring.{live_url[7:]}")


FOREIGN = """
import os, sys, sysv_ipc
os.setgid(65534); os.setuid(65534)
q = sysv_ipc.MessageQueue(int(sys.argv[1]), sysv_ipc.IPC_CREX, mode=0o600)
print("READY", flush=True)
"""


def test_rm_refuses_other_users_objects(capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create an object as another user")  # the CI runs as root
    key = unique_key()
    with spawn(FOREIGN, str(key)) as child:
        child.check()
    try:
        capsys.readouterr()
        assert main(["rm", f"sysvmq://{key}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kipc: error: ") and "nobody" in err[0] and "not by you" in err[0]
        assert f"sysvmq://{key & 0xFFFFFFFF:#x}" not in {r["url"] for r in ls_json(capsys=capsys)}
        assert f"sysvmq://{key & 0xFFFFFFFF:#x}" in {r["url"] for r in ls_json("--all", capsys=capsys)}
        with pytest.raises(kipc.PermissionDenied):
            kipc.remove(f"sysvmq://{key}")
    finally:
        sysv_ipc.remove_message_queue(sysv_ipc.MessageQueue(key).id)


def test_remove_every_local_kind_and_ls_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name("obj")
    with kipc.SharedMemory(f"posix://{name}", create=True, size=64, persist=True), \
            kipc.open(f"posixmq://{name}", create=True, persist=True), \
            kipc.open(f"file://{name}", create=True, persist=True), \
            kipc.open(f"fifo://{name}", create=True, persist=True):
        pass
    sem = kipc.Semaphore(f"posix://{name}", create=True, persist=True)
    sem.close()
    rows = {(r["kind"], r["url"]) for r in ls_json(capsys=capsys)}
    assert ("posixshm", f"posix://{name}") in rows and ("posixsem", f"posix://{name}") in rows
    # persist=True objects have no owner record: posixmq/file/fifo are not findable without the mqueue fs
    assert kipc.remove(f"posix://{name}") == [f"posixshm: posix://{name}", f"posixsem: posix://{name}"]
    assert kipc.remove(f"posixmq://{name}") == [f"posixmq: posixmq://{name}"]
    assert kipc.remove(f"file://{name}") == [f"file: file://{name}"]
    assert kipc.remove(f"fifo://{name}") == [f"fifo: fifo://{name}"]
    with pytest.raises(kipc.NotFound):
        kipc.remove(f"fifo://{name}")


def test_ls_lists_owner_recorded_objects_of_every_local_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name("rec")
    key = unique_key()
    with kipc.open(f"posixmq://{name}", create=True), kipc.open(f"file://{name}", create=True), \
            kipc.open(f"fifo://{name}", create=True), kipc.listen(f"unix://{name}"), \
            kipc.open(f"sysvmq://{key}", create=True), kipc.open(f"ring://{name}", create=True):
        rows = {r["url"]: r for r in ls_json(capsys=capsys)}
        for url in (f"posixmq://{name}", f"file://{name}", f"fifo://{name}", f"unix://{name}",
                    f"sysvmq://{key}", f"ring://{name}"):  # as its creator named it
            assert url in rows, url
            assert rows[url]["kipc"] is True and rows[url]["alive"] is True


def test_every_registered_scheme_has_an_ls_kind() -> None:
    missing = [s for s in registry.schemes() if not registry.kinds_of(s)]
    assert not missing, f"kipc ls does not cover {missing}"
    names = [k.name for k in admin.kinds()]
    assert len(names) == len(set(names)) and {"sysvshm", "sysvsem", "posixshm", "posixsem"} <= set(names)
    for k in admin.kinds():
        assert k.description and k.records, k


def test_bad_input_before_any_syscall() -> None:
    with pytest.raises(kipc.InvalidArgument):
        admin.inventory(kinds=["nope"])
    for url in ("ring://../x", "sysvmq://notakey", "posix://a/b", "bogus"):
        with pytest.raises(kipc.InvalidArgument):
            kipc.remove(url)
    with pytest.raises(kipc.Unsupported):
        kipc.remove("tcp://127.0.0.1:9")


def test_ftok_urls_resolve_alike_in_open_and_ls() -> None:
    """One ftok rule: kipc ls/rm need ?proj=N exactly as kipc.open does, and resolve the same key."""
    from kipc import _objects
    from kipc._naming import parse_url

    with pytest.raises(kipc.InvalidArgument, match="proj"):
        admin.locate("sysvmq:///etc/hostname")
    with pytest.raises(kipc.InvalidArgument, match="proj"):
        kipc.open("sysvmq:///etc/hostname")
    url = "sysvmq:///etc/hostname?proj=65"
    assert admin.locate(url)[1] == _objects.sysv_key(parse_url(url)) == _objects.ftok("/etc/hostname", 65)
