"""Anonymous pipes: the seed's parent -> child channel.

Contract card:

* Direction: one way; ``kipc.pipe()`` returns ``(reader, writer)``.
* Boundaries: framed (``framing="frame"``); ``"line"``/``"raw"`` for shell tools.
* Ordering: FIFO. Max message: ``max_message_size`` (default 1 GiB).
* Blocking: ``send`` blocks while the pipe is full, ``recv`` while it is empty;
  ``timeout=`` on both. Frames ≤ 4096 B are written atomically.
* Sharing: works across ``os.fork()``, ``multiprocessing`` (fork, spawn and
  forkserver: an end pickles by duplicating its fd into the child) and
  ``subprocess`` (``pass_fds=[w.fileno()]`` and ``kipc.open_fd(fd, "w")`` in the child).
* Close: writer closed (in every process) -> reader's ``recv`` raises
  ``ChannelClosed`` at a message boundary; EOF mid-frame is ``ProtocolError``.
* Cleanup: nothing named; closing both ends frees the kernel pipe.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from .._framing import DEFAULT_MAX_FRAME
from ..codecs import Codec
from ..errors import InvalidArgument, from_oserror
from ._stream import LINGER, StreamChannel

__all__ = ["PipeChannel", "open_fd", "pipe"]

_PIPE_SIZE = 1 << 20  # ask for 1 MiB pipes: fewer wake-ups for big messages (best effort)


def _grow(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size or the per-user quota: keep the default


class PipeChannel(StreamChannel):
    """One end of an anonymous pipe (or any inherited stream fd)."""

    scheme = "pipe"
    duplex = False

    def __init__(self, fd: int, direction: str, *, codec: str | Codec | None = None,
                 framing: str = "frame", max_message_size: int = DEFAULT_MAX_FRAME,
                 linger: float | str = LINGER) -> None:
        if direction not in ("r", "w"):
            raise InvalidArgument(f"direction must be 'r' or 'w', not {direction!r}")
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
            raise InvalidArgument(f"fd must be a non-negative int, not {fd!r}")
        rfd, wfd = (fd, -1) if direction == "r" else (-1, fd)
        self._options = {"codec": codec, "framing": framing, "max_message_size": max_message_size, "linger": linger}
        self._init_stream(f"pipe:fd{fd}{direction}", rfd, wfd, codec=codec, framing=framing,
                          max_message_size=max_message_size, linger=linger)

    def __reduce__(self) -> Any:
        # Pickled while multiprocessing starts a child: send a duplicate of the fd.
        from multiprocessing.reduction import DupFd

        direction = "r" if self._rfd >= 0 else "w"
        self._check_open("pickle")
        return (_rebuild, (DupFd(self.fileno()), direction, self._options))

    def detach(self) -> int:
        """Give up the fd without closing it (for handing to another library)."""
        self._check_open("detach")
        fd = self.fileno()
        self._rfd = self._wfd = -1
        self.close()  # closes nothing of the fd's, only the wake fd
        return fd


def _rebuild(dup: Any, direction: str, options: dict[str, Any]) -> PipeChannel:
    return PipeChannel(dup.detach(), direction, **options)


def pipe(*, codec: str | Codec | None = None, framing: str = "frame",
         max_message_size: int = DEFAULT_MAX_FRAME, linger: float | str = LINGER
         ) -> tuple[PipeChannel, PipeChannel]:
    """A new anonymous pipe as ``(reader, writer)`` channels (fds are close-on-exec)."""
    try:
        r, w = os.pipe2(os.O_CLOEXEC)
    except OSError as e:
        raise from_oserror(e, "pipe", "create") from e
    _grow(w)
    opts: dict[str, Any] = {"codec": codec, "framing": framing, "max_message_size": max_message_size,
                            "linger": linger}
    try:
        return PipeChannel(r, "r", **opts), PipeChannel(w, "w", **opts)
    except BaseException:
        os.close(r)
        os.close(w)
        raise


def open_fd(fd: int, direction: str = "r", **options: Any) -> PipeChannel:
    """Wrap an inherited fd (e.g. from ``subprocess`` ``pass_fds``) as a channel end."""
    return PipeChannel(fd, direction, **options)
