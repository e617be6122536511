"""Listening TCP sockets of this machine (``/proc/net/tcp``, ``/proc/net/tcp6``) and the processes holding them.

Contract card:

* :func:`tcp_listeners` lists every socket in state LISTEN of this network
  namespace: address, port, owning uid and socket inode, as the kernel prints
  them. Nothing is trusted: a line that does not parse is skipped, never an
  error; an unreadable table (no ``/proc``) gives nothing.
* :func:`socket_holders` finds which processes hold those inodes by reading
  ``/proc/PID/fd`` links (``socket:[INODE]``); only processes whose fds this
  user may read are seen (others' listeners show no pid). A process that exits
  during the walk is skipped.
* Read-only: nothing is opened except ``/proc`` files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Listening", "command_of", "socket_holders", "tcp_listeners"]

_LISTEN = "0A"  # TCP_LISTEN in include/net/tcp_states.h


@dataclass(frozen=True)
class Listening:
    """One listening TCP socket."""

    family: int
    host: str
    port: int
    uid: int
    inode: int


def _address(text: str) -> tuple[int, str, int] | None:
    """``0100007F:1F90`` (IPv4) or 32 hex digits + port (IPv6), each 32-bit word in host order."""
    addr, sep, port = text.partition(":")
    if not sep or len(port) != 4 or len(addr) not in (8, 32):
        return None
    try:
        raw = bytes.fromhex(addr)
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints native-endian words
        family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        return family, socket.inet_ntop(family, words), int(port, 16)
    except ValueError:
        return None


def _parse(lines: Iterable[str]) -> list[Listening]:
    out = []
    for line in lines:
        f = line.split()
        if len(f) < 10 or f[3] != _LISTEN or not f[7].isdigit() or not f[9].isdigit():
            continue  # the header, another state, or a line that does not parse
        addr = _address(f[1])
        if addr is None:
            continue
        out.append(Listening(addr[0], addr[1], addr[2], int(f[7]), int(f[9])))
    return out


def tcp_listeners() -> list[Listening]:
    """Every listening TCP socket (IPv4 and IPv6) of this network namespace."""
    found: list[Listening] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii", errors="replace") as f:
                found.extend(_parse(f))
        except OSError:
            continue
    return found


def socket_holders(inodes: Iterable[int], uids: Iterable[int] | None = None) -> dict[int, list[int]]:
    """``inode -> [pid, ...]`` for the sockets in ``inodes`` (processes of ``uids`` only, when given)."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    only = None if uids is None else set(uids)
    held: dict[int, list[int]] = {}
    if not wanted:
        return held
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return held
    for pid in sorted(pids):
        base = f"/proc/{pid}/fd"
        try:
            if only is not None and os.stat(f"/proc/{pid}").st_uid not in only:
                continue
            fds = os.listdir(base)
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(f"{base}/{fd}"))
            except OSError:
                continue
            if inode is not None and pid not in held.setdefault(inode, []):
                held[inode].append(pid)
    return held


def command_of(pid: int) -> str:
    """The process's command name (``/proc/PID/comm``), '' when it is gone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""
