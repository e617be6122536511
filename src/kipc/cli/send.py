"""``kipc send URL [DATA|-]``: send one message (or one per line) to any channel scheme.

* DATA is sent as UTF-8; ``-`` or no DATA reads stdin. A single message from
  stdin has exactly one trailing newline stripped (``echo hi`` sends ``hi``;
  ``printf 'hi\\n\\n'`` sends ``hi\\n``); ``--lines`` sends each line as one
  message, without its newline; ``--hex`` decodes hex text first (binary data).
* ``--create`` creates the object if it is missing and leaves it after kipc
  exits (``persist=True``: no owner record, so ``kipc gc`` keeps it; remove it
  with ``kipc rm URL``). ``unix://``/``tcp://`` are created by the listening
  side (``kipc recv --create``).
* ``--type`` (sysvmq) and ``--priority`` (posixmq) are passed as send knobs; a
  scheme that cannot honour one fails with a usage error.
* ``--timeout S`` also bounds the wait for a peer where opening waits for one (a FIFO's
  reader, a socket's listener); an object created here and never used is removed again, on a
  timeout as on SIGINT, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import registry
from .._naming import parse_url
from ..errors import InvalidArgument
from ._output import Output
from ._signals import exit_cleanly_on_signals

__all__ = ["REQUEST_TIMEOUT", "open_for_send", "read_messages", "request", "run"]

#: seconds ``--request`` waits for its reply when no ``--timeout`` is given
REQUEST_TIMEOUT = 10.0

#: Schemes where the other side listens and a sender only connects.
CONNECT_ONLY = frozenset(registry.listen_schemes())
#: Options a sending end needs on some schemes (a FIFO's creator is a reader unless told).
SEND_OPTIONS: dict[str, dict[str, Any]] = {"fifo": {"direction": "send"}}


def read_messages(data: str, *, lines: bool, hex_input: bool) -> list[bytes]:
    if data == "-":
        raw = sys.stdin.buffer.read()
    else:
        raw = data.encode()
    if hex_input:
        text = raw.decode("ascii", "replace")
        chunks = text.splitlines() if lines else ["".join(text.split())]
        try:
            return [bytes.fromhex("".join(c.split())) for c in chunks if c.strip() or not lines]
        except ValueError as e:
            raise InvalidArgument(f"--hex input is not hex: {e}") from None
    if lines:
        return raw.splitlines()
    if data == "-" and raw.endswith(b"\n"):
        raw = raw[:-1]
    return [raw]


def open_for_send(url: str, *, create: bool, timeout: float | None = None) -> Any:
    import kipc

    scheme = parse_url(url).scheme
    cls = registry.load(scheme)  # unknown scheme -> usage error before reading stdin
    opts: dict[str, Any] = dict(SEND_OPTIONS.get(scheme, {}))
    if timeout is not None and "timeout" in registry.options_of(cls):
        opts["timeout"] = timeout  # opening waits for a peer (FIFO reader, listener): bounded too
    if create:
        if scheme in CONNECT_ONLY:
            raise InvalidArgument(f"send --create: {scheme}:// is created by the listening side "
                                  f"(run `kipc recv {url} --create`)")
        opts.update(create="if_missing", persist=True)
    return kipc.open(url, **opts)


def request(url: str, data: bytes, *, timeout: float) -> bytes:
    """One request to the service at ``url``; its reply (raw bytes)."""
    import kipc

    scheme = parse_url(url).scheme
    if scheme == "nats":
        # one request: on the handle's own connection (the default "own" opens a second one, ~2 ms)
        with kipc.open(url, scheme="nats", request_conn="shared") as ch:
            return bytes(ch.request(data, timeout=timeout))
    with kipc.Client(url) as client:  # InvalidArgument for a scheme without a Server; NotFound for none there
        reply = client.request(data, timeout=timeout)
        assert isinstance(reply, bytes)  # no codec: the reply is bytes
        return reply


def _run_request(args: argparse.Namespace, out: Output) -> int:
    used = [flag for flag, on in (("--lines", args.lines), ("--create", args.create),
                                  ("--type", args.type is not None), ("--priority", args.priority is not None)) if on]
    if used:
        raise InvalidArgument(f"send --request: not with {', '.join(used)}")
    (data,) = read_messages(args.data, lines=False, hex_input=args.hex)
    timeout = REQUEST_TIMEOUT if args.timeout is None else args.timeout
    with exit_cleanly_on_signals():
        reply = request(args.url, data, timeout=timeout)
    if out.json_mode:
        try:
            text: str | None = reply.decode()
        except UnicodeDecodeError:
            text = None
        out.json({"url": args.url, "size": len(reply), "text": text, "hex": reply.hex()})
    elif out.out is sys.stdout:
        sys.stdout.buffer.write(reply + b"\n")
        sys.stdout.buffer.flush()
    else:
        out.out.write(reply.decode(errors="replace") + "\n")
    return 0


def run(args: argparse.Namespace, out: Output) -> int:
    if args.request:
        parse_url(args.url)
        return _run_request(args, out)
    knobs: dict[str, Any] = {}
    if args.type is not None:
        knobs["type"] = args.type
    if args.priority is not None:
        knobs["priority"] = args.priority
    parse_url(args.url)
    messages = read_messages(args.data, lines=args.lines, hex_input=args.hex)
    sent = 0
    with exit_cleanly_on_signals(), open_for_send(args.url, create=args.create, timeout=args.timeout) as ch:
        for m in messages:
            ch.send(m, timeout=args.timeout, **knobs)
            sent += 1
    if out.json_mode:
        out.json({"url": args.url, "sent": sent, "bytes": sum(map(len, messages))})
    return 0
