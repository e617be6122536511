"""``kipc ls [PATTERN] [--kind K]``: every IPC object visible to this user (``--all``: every readable one).

Columns: kind, URL, owner, mode, size, depth (messages waiting), attached
processes and the pids the kernel names (for TCP listeners: the processes
holding the socket, and their command), creator pid and whether it is alive,
and whether kipc created it. Sizes are human (``4.0 MiB``; ``--json`` gives bytes).
The table fits the terminal (or ``COLUMNS``): columns are dropped by priority
(command, kipc, pids, attached, mode, creator, owner, depth, alive go first), URLs are never cut.
``PATTERN`` is a shell pattern on the URL (``'ring://job*'``) or, without
wildcards, a substring. Objects kipc created are listed under the URL their
creator gave (``sysvmq://5301``, not only ``0x14b5``). A note about what cannot
be listed here (the mqueue filesystem) is printed once per boot, not on every call.
``--json`` prints a list of objects.

Topics and services: after the table, a second one names the objects that play a
pub/sub or request/reply role, with their peers (``--json``: the same objects carry
``"role"``, ``"peers"`` and ``"peer_pids"``). Found cheaply, without attaching to anything:

* a ``unix://`` topic (its owner record says so): ``peers`` = subscriber connections
  the kernel lists for its socket (``/proc/net/unix``: accepted, or waiting to be);
* a ``ring://`` request/reply server: ``peers`` = its clients' reply rings
  (``NAME.r<pid>x<n>``), ``peer_pids`` = those clients;
* a ``ring://`` topic (its header's magic says so): ``peers`` = occupied subscriber slots,
  ``peer_pids`` = their pids, and ``"subscribers"``: [{pid, lag, dropped, alive}] (lag =
  messages published that it has not received; dropped = what ``drop_oldest`` made it skip),
  shown as a third table, ``subscribers``. Read by attaching for an instant *without*
  subscribing (``subscribe=False`` takes no slot and writes nothing to the header), so
  looking never changes the topic; the figures are as read, without locks.

``unix://``/``tcp://`` reqrep servers are plain listeners to an outsider and are not told apart.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import re
import struct
from typing import Any

from .. import _owners, admin
from .._naming import runtime_dir
from .._platform import native
from ._output import Output, human_size

__all__ = ["ROLE_COLUMNS", "SUBSCRIBER_COLUMNS", "matches", "notes_once", "roles", "rows", "run", "spellings"]

COLUMNS = ("kind", "url", "owner", "mode", "size", "depth", "attached", "pids", "command", "creator", "alive", "kipc")
#: the order in which columns go when the table is too wide (kind and url always stay)
DROP = ("command", "kipc", "pids", "attached", "mode", "creator", "owner", "depth", "alive", "size")


def kinds_arg(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [k.strip() for v in values for k in v.split(",") if k.strip()]


def spellings(url: str) -> list[str]:
    """``url`` and, for a SysV key in hex, the decimal spelling (``sysvmq://0x14b5`` is ``sysvmq://5301``)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("sysv") and rest.startswith("0x"):
        try:
            return [url, f"{scheme}://{int(rest, 16)}"]
        except ValueError:
            pass
    return [url]


def matches(url: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatchcase(u, pattern) for u in spellings(url))
    return any(pattern in u for u in spellings(url))


def rows(infos: list[admin.ObjectInfo]) -> list[list[object]]:
    out: list[list[object]] = []
    for i in infos:
        alive = "" if i.alive is None else ("yes" if i.alive else "DEAD")
        out.append([i.kind, i.url, i.owner, "" if i.mode is None else f"{i.mode:04o}", human_size(i.size), i.depth,
                    i.attached, ",".join(map(str, i.pids)), i.command, i.creator_pid, alive, "yes" if i.kipc else ""])
    return out


ROLE_COLUMNS = ("role", "url", "creator", "alive", "peers", "peer pids")
SUBSCRIBER_COLUMNS = ("topic", "pid", "alive", "lag", "dropped")
_CLIENT_RING = re.compile(r"ring://(.+)\.r(\d+)x\d+\Z")  # reqrep.Client's reply ring: NAME.r<pid>x<n>


def _socket_connections() -> dict[str, int]:
    """socket path -> connections the kernel lists for it, besides the listener (``/proc/net/unix``)."""
    counts: dict[str, int] = {}
    try:
        with open("/proc/net/unix") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; St 01 = listening
                if len(parts) >= 8 and parts[5] in ("02", "03"):
                    counts[parts[7]] = counts.get(parts[7], 0) + 1
    except OSError:
        pass
    return counts


def _ring_topic(info: admin.ObjectInfo) -> dict[str, Any] | None:
    """The role entry of a ``ring://`` object if it is a topic (else None): read without subscribing."""
    if not info.path:
        return None
    try:  # the magic first: a channel (or anything else) is not attached at all
        fd = os.open(info.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            magic = os.pread(fd, 8, 0)
        finally:
            os.close(fd)
    except OSError:
        return None
    try:
        from ..transports import ring_topic
    except ImportError:  # the native topic module not built: nothing to say
        return None
    if magic != struct.pack("<Q", native("_topic").MAGIC):
        return None
    try:
        with ring_topic.RingTopic(info.url, subscribe=False) as topic:
            header = topic.info()
    except Exception:  # another user's, mid-creation, corrupt, just removed: no figures
        return {"role": "ring topic", "peers": None, "peer_pids": [], "subscribers": []}
    subs = [{"pid": int(s["pid"]), "lag": int(s["lag"]), "dropped": int(s["dropped"]), "alive": bool(s["alive"])}
            for s in header.get("slots", [])]
    return {"role": "ring topic", "peers": len(subs), "peer_pids": sorted(s["pid"] for s in subs),
            "subscribers": subs}


def roles(infos: list[admin.ObjectInfo]) -> dict[str, dict[str, Any]]:
    """url -> {"role", "peers", "peer_pids"} for the topics and services among ``infos``."""
    out: dict[str, dict[str, Any]] = {}
    conns: dict[str, int] | None = None
    clients: dict[str, list[int]] = {}
    for i in infos:
        if i.kind == "ring" and (m := _CLIENT_RING.match(i.url)):
            clients.setdefault(f"ring://{m.group(1)}", []).append(int(m.group(2)))
    for i in infos:
        if i.kind == "unix" and i.kipc and i.path:
            rec = _owners.lookup(i.url)
            if rec is not None and rec.extra.get("topic"):
                if conns is None:
                    conns = _socket_connections()
                out[i.url] = {"role": "unix topic", "peers": conns.get(i.path, 0), "peer_pids": []}
        elif i.kind == "ring" and i.url in clients:
            pids = sorted(clients[i.url])
            out[i.url] = {"role": "reqrep server", "peers": len(pids), "peer_pids": pids}
        elif i.kind == "ring" and (topic := _ring_topic(i)) is not None:
            out[i.url] = topic
    return out


def notes_once(notes: list[str]) -> list[str]:
    """The notes not yet shown to this user since boot (a stamp per note in kipc's runtime dir)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    fresh = []
    for note in notes:
        digest = hashlib.sha256(f"{boot}\0{note}".encode()).hexdigest()[:16]
        try:
            stamp = os.path.join(runtime_dir(), f"note-{digest}")
            fd = os.open(stamp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        except FileExistsError:
            continue
        except OSError:
            pass  # cannot remember: show it
        fresh.append(note)
    return fresh


def run(args: argparse.Namespace, out: Output) -> int:
    kinds = kinds_arg(args.kind)
    infos = [i for i in admin.inventory(all_users=args.all, kinds=kinds) if matches(i.url, args.pattern)]
    found = roles(infos)
    if out.json_mode:
        out.json([{**i.to_dict(), **found.get(i.url, {})} for i in infos])
        return 0
    if infos:
        out.table(COLUMNS, rows(infos), right=("size", "depth", "attached", "creator"), drop=DROP)
    if found:
        by_url = {i.url: i for i in infos}
        table = []
        for url, r in found.items():
            i = by_url[url]
            alive = "" if i.alive is None else ("yes" if i.alive else "DEAD")
            peers = "?" if r["peers"] is None else r["peers"]
            table.append([r["role"], url, i.creator_pid, alive, peers, ",".join(map(str, r["peer_pids"]))])
        out.table(ROLE_COLUMNS, table, title="topics and services", right=("creator", "peers"), drop=("peer pids",))
        subs = [[url, s["pid"], "yes" if s["alive"] else "DEAD", s["lag"], s["dropped"]]
                for url, r in found.items() for s in r.get("subscribers", [])]
        if subs:
            out.table(SUBSCRIBER_COLUMNS, subs, title="subscribers", right=("pid", "lag", "dropped"))
    if not infos:
        what = f" matching {args.pattern!r}" if args.pattern else ""
        out.note(f"no IPC objects{what}" + ("" if args.all else " of yours (--all shows everyone's)"))
    notes = admin.blind_spots(kinds)
    # asked for explicitly (--kind): always say what is missing; else once per boot
    for note in notes if kinds else notes_once(notes):
        out.note(note)
    return 0
