"""Named pipes: ``fifo:///abs/path`` or ``fifo://NAME`` (in ``runtime_dir("fifo")``).

Contract card:

* Direction: one way per end. ``direction="recv"`` or ``"send"``; the default
  is ``"recv"`` for the creator (``create=True``: a mailbox others write to)
  and ``"send"`` for an opener.
* Creation: ``create=True`` makes the FIFO with ``mkfifo`` (exclusive), sets
  ``mode`` (default 0600) with ``fchmod`` so the umask cannot change it, and
  writes an owner record; ``create="if_missing"`` attaches if it exists.
  The creator unlinks it on close (unless ``persist=True``); openers never do.
* Attach checks (before any data moves): the path must be a FIFO, not a
  symlink (``O_NOFOLLOW``), owned by our uid (or one in ``allow_uids=``) and
  without group/other bits (unless ``allow_open_mode=True``).
* Rendezvous: the reader opens at once (``O_NONBLOCK``) and ``recv`` waits for
  a writer. The writer's open waits for a reader (``ENXIO`` is retried with a
  backoff up to 50 ms) for at most ``timeout=`` seconds (``None``: forever).
* Writers leaving: when the last writer closes, the reader's ``recv`` raises
  :class:`ChannelClosed` once (at a message boundary; inside a frame it is
  :class:`ProtocolError`). The channel stays open: the next ``recv`` waits for
  the next writer. With ``follow=True`` writers leaving is not reported at all
  (``recv`` just waits, like ``tail -f``). How: the reader opens a second
  read fd on the same pipe (via ``/proc/self/fd``) *before* closing the one
  that saw EOF, so the pipe never loses its reader and no byte is lost. If the
  path was removed or replaced, the channel is closed for good.
* Boundaries: framed; ``framing="line"`` (``echo hi > path``, ``cat path``)
  or ``"raw"``. Frames up to ``PIPE_BUF`` (4096 B including the 4-byte
  header) are written atomically, so several writers may share one FIFO with
  messages ≤ 4092 B; larger messages from several concurrent writers can
  interleave (use ``unix://`` or ``file://`` for that).
* Max message: ``max_message_size`` (default 1 GiB). A reader gone is
  :class:`PeerGone` on send.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time
from typing import Any, ClassVar

from .. import _owners
from .._base import CreateMode, Deadline
from .._framing import DEFAULT_MAX_FRAME, FrameDecoder
from .._kinds import PathKind
from .._naming import (
    ParsedURL,
    parse_bool,
    parse_seconds,
    parse_url,
    runtime_dir,
    validate_mode,
    validate_name,
    validate_path,
)
from .._objects import check_attach, create_or_attach, file_identity, parse_create, parse_uids
from ..codecs import Codec
from ..errors import (
    AlreadyExists,
    BadObject,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    NotFound,
    PermissionDenied,
    from_oserror,
)
from ._stream import LINGER, StreamChannel
from .pipe import _grow

__all__ = ["KIND", "FifoChannel", "fifo_path"]

_OPEN_FLAGS = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def fifo_path(parsed: ParsedURL) -> str:
    """The filesystem path a ``fifo://`` URL names."""
    if parsed.netloc:
        if parsed.path:
            raise InvalidArgument(f"{parsed.url}: use fifo://NAME or fifo:///absolute/path")
        name = validate_name(parsed.netloc, what="fifo name")  # before runtime_dir() touches the disk
        return os.path.join(runtime_dir("fifo"), name)
    return validate_path(parsed.path, what="fifo path")


class FifoChannel(StreamChannel):
    """One end (reader or writer) of a named pipe."""

    scheme: ClassVar[str] = "fifo"
    duplex: ClassVar[bool] = False
    _path: str | None = None
    _ident: tuple[int, int] | None = None
    _gone: bool = False
    follow: bool = False

    def __init__(self, url: str, *, create: CreateMode = False, direction: str | None = None,
                 mode: int = 0o600, allow_open_mode: bool | str = False, allow_uids: Any = None,
                 follow: bool | str = False, timeout: float | str | None = None, persist: bool | str = False,
                 codec: str | Codec | None = None, framing: str = "frame",
                 max_message_size: int | str = DEFAULT_MAX_FRAME, linger: float | str = LINGER) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "fifo":
            raise InvalidArgument(f"{url}: not a fifo:// URL")
        path = fifo_path(parsed)
        create = parse_create(create)
        if direction is None:
            direction = "recv" if create else "send"
        if direction not in ("send", "recv"):
            raise InvalidArgument(f"{url}: direction must be 'send' or 'recv', not {direction!r}")
        mode = validate_mode(mode)
        self._allow_open_mode = parse_bool(allow_open_mode, what="allow_open_mode")
        self._allow = parse_uids(allow_uids)
        self.follow = parse_bool(follow, what="follow")
        self.persist = parse_bool(persist, what="persist")
        deadline = Deadline(parse_seconds(timeout))
        self.url, self._path = url, path
        fd = -1
        try:
            # attach opens below, per direction: -1 = "not created here"
            fd, _ = create_or_attach(create, lambda: self._create(path, mode), lambda: -1)
            if direction == "recv":
                if fd < 0:
                    fd = self._open(os.O_RDONLY)
                _grow(fd)
                rfd, wfd = fd, -1
            else:
                if fd >= 0:  # the creator's probe read end must not pose as a reader
                    os.close(fd)
                    fd = -1
                fd = self._open_writer(deadline)
                rfd, wfd = -1, fd
            self._init_stream(url, rfd, wfd, codec=codec, framing=framing, max_message_size=max_message_size,
                              linger=linger)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if self.owner:
                self.owner = False
                self._unlink()
            raise

    # -- opening -------------------------------------------------------------------
    def _create(self, path: str, mode: int) -> int:
        """mkfifo exclusively; returns a read fd (the probe that sets the mode and the identity)."""
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError as e:
            raise AlreadyExists(f"create {self.url}: {path} already exists", errno=e.errno) from e
        except OSError as e:
            raise from_oserror(e, self.url, "create") from e
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        except OSError as e:
            raise from_oserror(e, self.url, "create") from e
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self.owner = True
        try:
            os.fchmod(fd, mode)  # mkfifo's mode went through the umask; set it exactly
            _owners.record(self.url, "fifo", path=path, identity=file_identity(st, fd=fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check(self, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise PermissionDenied(f"open {self.url}: {self._path} is a symlink; refused")
        if not stat.S_ISFIFO(st.st_mode):
            raise BadObject(f"open {self.url}: {self._path} is not a FIFO")
        check_attach(f"{self.url}: {self._path}", uid=st.st_uid, mode=st.st_mode,
                     allowed_mode=0o777 if self._allow_open_mode or self.owner else 0o600, allow_uids=self._allow,
                     foreign_hint="pass allow_uids=[{uid}] to use it",
                     mode_hint="group/other bits refused (pass allow_open_mode=True)")

    def _open(self, flags: int) -> int:
        """Open the (already checked) path; ENXIO passes through for the writer's retry loop."""
        assert self._path is not None
        try:
            fd = os.open(self._path, flags | _OPEN_FLAGS)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PermissionDenied(f"open {self.url}: {self._path} is a symlink; refused", errno=e.errno) from e
            if e.errno == errno.ENXIO:
                raise
            raise from_oserror(e, self.url, "open") from e
        try:
            st = os.fstat(fd)
            self._check(st)
        except BaseException:
            os.close(fd)
            raise
        if self._ident is None:
            self._ident = (st.st_dev, st.st_ino)
        return fd

    def _open_writer(self, deadline: Deadline) -> int:
        assert self._path is not None
        try:
            self._check(os.lstat(self._path))  # refuse a regular file/symlink before opening it
        except FileNotFoundError as e:
            raise NotFound(f"open {self.url}: {self._path} does not exist (create=True makes it)",
                           errno=e.errno) from e
        delay = 0.001
        while True:
            try:
                return self._open(os.O_WRONLY)
            except KipcError:
                raise
            except OSError as e:  # ENXIO: no reader yet
                if deadline.expired() or deadline.nonblocking:
                    raise deadline.error(f"open {self.url} (waiting for a reader)") from e
            left = deadline.remaining()
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.05)

    # -- writers leaving ---------------------------------------------------------
    def _on_eof(self) -> bool:
        """read() said EOF: final only when the writers left at a boundary and we do not follow."""
        p = select.poll()
        p.register(self._rfd, select.POLLIN)
        if not any(ev & select.POLLHUP for _, ev in p.poll(0)):
            return False  # EOF but no writer ever came since we opened: wait for one
        boundary = self._decoder.at_boundary and self._big is None and not self._lines
        self._reopen()
        return not (self.follow and boundary and not self._gone)

    def _reopen(self) -> None:
        """Swap the read fd for a fresh one on the same pipe (new fd first: the pipe keeps a reader)."""
        old = self._rfd
        try:
            st = os.stat(self._path or "")
            if (st.st_dev, st.st_ino) != self._ident:
                raise FileNotFoundError
            new = os.open(f"/proc/self/fd/{old}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._gone = True  # removed or replaced: no writer can reach us any more
            return
        self._rfd = new
        os.close(old)

    def _try_recv(self, knobs: dict[str, Any]) -> Any:
        if self._eof:
            if self._gone:
                raise ChannelClosed(f"recv on {self.url}: the FIFO was removed or replaced")
            self._eof = False
            if not self._decoder.at_boundary or self._big is not None:
                # drop the truncated frame of a writer that left mid-message
                self._decoder = FrameDecoder(self.max_message_size or 0, where=self.url)
                self._big = None
        return super()._try_recv(knobs)

    # -- cleanup -----------------------------------------------------------------
    def _unlink(self) -> None:
        path, ident = self._path, self._ident
        if path is not None and ident is not None:
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:  # never remove a successor's FIFO
                    os.unlink(path)
            except FileNotFoundError:
                pass
        _owners.forget(self.url)


# -- object kind: how kipc ls / rm / gc see FIFOs (no machine-wide list: found through owner records) -------
KIND = PathKind("fifo", sub="fifo", is_type=stat.S_ISFIFO, noun="FIFO",
                description="fifo (owner records; the FIFO node itself)")
