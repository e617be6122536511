"""Mapped files: ``kipc.SharedMemory("file:///path", size=..., create=...)``.

Contract card:

* A regular file mapped ``MAP_SHARED``: every process (and C program) mapping the same file sees
  the same bytes, and the kernel writes them back to the file, so the data survives the
  processes and, with ``persist=True``, reboots. ``.buf`` / ``.ndarray()`` as for
  :class:`kipc.SharedMemory`; no kipc header: byte 0 of ``.buf`` is byte 0 of the file.
* ``flush()`` = ``msync(MS_SYNC)``: returns once the pages are written to the file (needed only
  for durability against a machine crash; other processes see writes at once).
* Size: ``size=`` bytes at creation (the file is created with ``O_EXCL`` and ``ftruncate``d).
  On attach ``size=`` is a minimum: a smaller file is refused with :class:`BadObject`, and an
  empty one too (after waiting at most 1 s for a creator between its ``O_EXCL`` create and its
  ``ftruncate``); the mapping covers the file's size at attach. A file truncated later by
  someone else gives SIGBUS on touching the lost pages (as for any mapped file).
* Creation exclusive by default (``create=True``), ``create="if_missing"``, ``create=False``;
  ``wait=seconds`` waits for another process to create it (as ``kipc.open``; then ``Timeout``);
  mode 0600 whatever the umask. Opening refuses a symlink (``O_NOFOLLOW``), anything that is not
  a regular file, a file of another uid (``allow_foreign=True``) or with more mode bits than
  ``mode``.
* Cleanup: like every kipc object, the creator removes the file on ``close()`` unless
  ``persist=True``; openers never remove. Views taken from ``.buf`` stay valid after
  ``close()`` (the mapping goes when the last of them does).
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
import stat as _stat

from . import _owners
from ._base import CreateMode
from ._kinds import PathKind
from ._naming import DEFAULT_MODE, parse_url, validate_path
from ._objects import (
    check_attach,
    file_identity,
    open_path,
    open_waiting,
    remove_path,
    sized,
)
from .errors import BadObject, InvalidArgument, KipcError, PermissionDenied, from_oserror
from .shm import SharedMemory

__all__ = ["KIND", "MappedFile"]


class MappedFile(SharedMemory):
    """A regular file mapped shared (``SharedMemory("file:///path")`` returns one)."""

    path: str = ""

    def __init__(self, url: str, *, size: int | str | None = None, create: CreateMode = False,
                 mode: int | str = DEFAULT_MODE, persist: bool = False, allow_foreign: bool = False,
                 wait: float | None = None) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "file" or parsed.netloc:
            raise InvalidArgument(f"{url}: mapped files are file:///absolute/path")
        create, size = self._check_options(url, dict(parsed.query), create, wait, mode, size, persist,
                                           "a mapped file")
        path = validate_path(parsed.path)
        mode = self.mode
        self.url = url
        self.path = path
        self._record_url = f"mapped-file://{path}"
        fd, created = open_waiting(url, wait, lambda: open_path(path, url, create, mode, error=self._error))
        try:
            st = os.fstat(fd)
            if created:
                os.fchmod(fd, mode)  # the umask filtered open()'s mode
                assert size is not None
                os.ftruncate(fd, size)
                real = size
            else:
                if not _stat.S_ISREG(st.st_mode):
                    raise BadObject(f"open {url}: {path} is not a regular file")
                check_attach(url, uid=st.st_uid, mode=st.st_mode, allowed_mode=mode, allow_foreign=allow_foreign)
                st = sized(fd, st)  # its creator may be between O_EXCL and ftruncate
                if size is not None and st.st_size < size:
                    raise BadObject(f"open {url}: file is {st.st_size} bytes, smaller than the {size} asked")
                if st.st_size == 0:
                    raise BadObject(f"open {url}: file is empty (nothing to map)")
                real = st.st_size
            self._mmap = mmap.mmap(fd, real, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException as e:
            if created:
                os.unlink(path)
            if isinstance(e, OSError) and not type(e).__module__.startswith("kipc"):
                raise self._error(e, "create" if created else "open") from e
            raise
        finally:
            os.close(fd)  # the mapping keeps the file
        self._mv = memoryview(self._mmap)
        self.size = real
        self.kind = "file"
        if created:
            self.owner = True
            if not self.persist:
                _owners.record(self._record_url, "mapped-file", path=path, size=real,
                               identity=file_identity(os.stat(path), path=path))
        self._closed = False

    def _error(self, e: OSError, op: str) -> KipcError:
        if e.errno == _errno.ELOOP:
            return PermissionDenied(f"{op} {self.url}: {self.path} is a symlink; refused", errno=e.errno)
        if e.errno == _errno.EISDIR:
            return BadObject(f"{op} {self.url}: {self.path} is a directory, not a regular file", errno=e.errno)
        return from_oserror(e, self.url, op)

    def flush(self) -> None:
        """Write the mapped pages back to the file now (``msync(MS_SYNC)``)."""
        self._check_open("flush")
        self._mmap.flush()

    def _close(self) -> None:
        self._mv = None
        try:
            self._mmap.close()
        except BufferError:
            pass  # views still exist; the mmap unmaps itself when they are gone

    def _unlink(self) -> None:
        remove_path(self.path, self._record_url)

    def __repr__(self) -> str:
        return f"<SharedMemory {self.url} (mapped file) {getattr(self, 'size', '?')} B " \
               f"{'closed' if self._closed else 'open'}>"


# kipc ls / gc: the mapped files kipc created (from their owner records; "mapped-file:///path")
KIND = PathKind("mapped-file", sub="mapped", is_type=_stat.S_ISREG, noun="mapped file",
                description="mapped-file (kipc-created mapped files, from owner records)")
