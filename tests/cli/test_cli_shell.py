"""Real shell pipelines through the installed ``kipc`` command, and a C program on the other end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from kipc.testing import unique_key, unique_name

from ..helpers import build_c

KIPC = shutil.which("kipc", path=os.path.dirname(sys.executable)) or "kipc"
#: schemes whose shell round trip needs a receiver running first (tested here)
LISTENER_OR_FIFO = ("fifo", "unix", "tcp")


def sh(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KIPC=KIPC)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_echo_pipeline_sysvmq_with_type() -> None:
    key = unique_key()
    r = sh(f'echo hello | "$KIPC" send sysvmq://{key} --type 3 --create\n'
           f'"$KIPC" recv sysvmq://{key} --type 3 --timeout 10\n'
           f'"$KIPC" rm sysvmq://{key}')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["hello", f"removed sysvmq: sysvmq://{key}"]


def test_binary_safe_hex_and_raw() -> None:
    url = f"ring://{unique_name('bin')}"
    r = sh(f'printf "00ff0d0a" | "$KIPC" send {url} --hex --create\n'
           f'"$KIPC" recv {url} --raw --timeout 10 | od -An -tx1\n'
           f'"$KIPC" rm {url} >/dev/null')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["00", "ff", "0d", "0a"]


def test_stdin_strips_exactly_one_newline_and_lines_mode() -> None:
    url = f"posixmq://{unique_name('nl')}"
    r = sh(f'printf "a\\n\\n" | "$KIPC" send {url} --create\n'
           f'printf "x\\ny\\n" | "$KIPC" send {url} --lines\n'
           f'"$KIPC" recv {url} -n 3 --hex --timeout 10\n'
           f'"$KIPC" rm {url} >/dev/null')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["610a", "78", "79"]


@pytest.mark.parametrize("scheme", LISTENER_OR_FIFO)
def test_receiver_first_pipelines(scheme: str) -> None:
    if scheme == "tcp":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    else:
        url = f"{scheme}://{unique_name('sh')}"
    # the receiver creates (fifo) or listens (unix/tcp) and prints two messages; the sender retries until it is up
    out = os.path.join("/tmp", unique_name("out"))
    try:
        env_script = (f'export OUT={out}\n'
                      f'"$KIPC" recv {url} --create -n 2 --timeout 20 > "$OUT" &\n'
                      'rpid=$!\n'
                      f'for i in $(seq 100); do printf "one\\ntwo\\n" | "$KIPC" send {url} --lines --timeout 5 '
                      '2>/dev/null && break; sleep 0.1; done\n'
                      'wait $rpid\ncat "$OUT"')
        r = sh(env_script)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["one", "two"]
    finally:
        if os.path.exists(out):
            os.unlink(out)


C_PEER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
struct msg { long type; char text[256]; };
int main(int argc, char **argv) {
    int id = msgget((key_t)strtol(argv[1], NULL, 0), 0);
    if (id < 0) { perror("msgget"); return 1; }
    struct msg m;
    ssize_t n = msgrcv(id, &m, sizeof m.text, 3, 0);
    if (n < 0) { perror("msgrcv"); return 1; }
    printf("C got type %ld: %.*s\n", m.type, (int)n, m.text);
    struct msg r = { 4, "reply from C" };
    if (msgsnd(id, &r, strlen(r.text), 0) < 0) { perror("msgsnd"); return 1; }
    return 0;
}
"""


def test_kipc_send_to_c_msgrcv_and_c_msgsnd_to_kipc_recv(tmp_path: os.PathLike[str]) -> None:
    exe = build_c(os.fspath(tmp_path), C_PEER, "peer")
    key = unique_key()
    r = sh(f'echo x | "$KIPC" send sysvmq://{key} --type 3 --create\n'
           f'{exe} {key}\n'
           f'"$KIPC" recv sysvmq://{key} --type 4 --timeout 10\n'
           f'"$KIPC" rm sysvmq://{key} >/dev/null')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["C got type 3: x", "reply from C"]


def test_errors_from_the_real_command() -> None:
    r = sh(f'"$KIPC" recv ring://{unique_name("missing")} --timeout 1 || echo "rc=$?"')
    assert r.stdout.strip() == "rc=1" and r.stderr.startswith("kipc: error: ") and "Traceback" not in r.stderr
    r = sh('"$KIPC" send "nope://x" hi || echo "rc=$?"')
    assert r.stdout.strip() == "rc=2" and len(r.stderr.strip().splitlines()) == 1


def test_follow_until_idle_and_head_closing_the_pipe() -> None:
    url = f"file://{unique_name('follow')}"
    r = sh(f'printf "1\\n2\\n3\\n" | "$KIPC" send {url} --lines --create\n'
           f'"$KIPC" recv {url} --follow --timeout 0.5\n'
           f'printf "4\\n5\\n6\\n" | "$KIPC" send {url} --lines\n'
           f'set +o pipefail; "$KIPC" recv {url} --follow --timeout 0.5 | head -n 1\n'
           f'"$KIPC" rm {url} >/dev/null')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "2", "3", "4"]
    assert "Traceback" not in r.stderr
