"""numpy arrays as messages: the wire format and the array methods of ring channels and topics.

An array message is a header (magic, dtype string, ndim, the shape as u64s) padded to 16 bytes,
then the elements, so ``loan_array`` can fill them in place aligned and ``recv_array(copy=False)``
can return an array over the shared memory. No pickle: a receiver trusts only a header that
describes exactly the bytes that arrived (anything else is ``ProtocolError``). ``KNDA``
(unpadded, older senders) is still received. C programs can produce the same bytes.

:class:`ArrayMethods` is written once for every transport that offers it; a transport supplies
``loan`` (in-place space), ``_send_parts`` (one message from several buffers) and
``_recv_array_view`` / ``_not_an_array`` (a received message as a memoryview, and what a
non-array message becomes: kept in place or consumed).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._base import Deadline
from ..errors import InvalidArgument, ProtocolError

if TYPE_CHECKING:  # numpy is optional: only type checkers import it here
    import numpy as np

    #: what recv_array returns and loan_array lends: an array of some dtype and shape
    Array = np.ndarray[tuple[int, ...], np.dtype[np.generic[object]]]

ARRAY_MAGIC = b"KND2"
ARRAY_MAGIC_V1 = b"KNDA"
ARRAY_PREFIX = b"KND"  # what a ring's recv_array asks the C side to check before taking a message
_HDR = struct.Struct("<4sB15sB")
MAX_DIMS = 32


def array_header(dtype: Any, shape: tuple[int, ...]) -> bytes:
    dt = dtype.str.encode()
    if len(dt) > 15:
        raise InvalidArgument(f"array dtype {dtype} cannot be described in 15 bytes")
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"array of {len(shape)} dimensions (limit {MAX_DIMS})")
    head = _HDR.pack(ARRAY_MAGIC, len(dt), dt, len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
    return head + bytes(-len(head) % 16)


def parse_array_header(mv: memoryview) -> tuple[str, tuple[int, ...], int] | str:
    """(dtype str, shape, data offset), or why the message is not an array."""
    if mv.nbytes < _HDR.size:
        return f"a {mv.nbytes}-byte message, shorter than an array header"
    magic, dlen, dt, ndim = _HDR.unpack_from(mv)
    if magic not in (ARRAY_MAGIC, ARRAY_MAGIC_V1) or dlen > 15 or ndim > MAX_DIMS:
        return f"a {mv.nbytes}-byte message starting {bytes(mv[:8])!r}, not an array header"
    end = _HDR.size + 8 * ndim
    offset = end + (-end % 16 if magic == ARRAY_MAGIC else 0)
    if mv.nbytes < offset:
        return f"a {mv.nbytes}-byte message, shorter than its {ndim}-dimension array header"
    shape = struct.unpack_from(f"<{ndim}Q", mv, _HDR.size)
    return dt[:dlen].decode("ascii", "replace"), tuple(shape), offset


class ArrayMethods:
    """``send_array``, ``loan_array`` and ``recv_array`` over a transport's small hooks."""

    url: str

    # -- hooks ---------------------------------------------------------------------------------
    def loan(self, n: int, *, timeout: float | None = None) -> contextlib.AbstractContextManager[memoryview]:
        raise NotImplementedError

    def _send_parts(self, parts: tuple[bytes, Any], size: int, deadline: Deadline) -> None:
        """Send ``parts`` (header, elements as bytes) as one message of ``size`` bytes."""
        raise NotImplementedError

    def _recv_array_view(self, deadline: Deadline, copy: bool) -> memoryview:
        """The next message as a memoryview (over shared memory when the transport can)."""
        raise NotImplementedError

    def _not_an_array(self, mv: memoryview, what: str) -> ProtocolError:
        """The error for a received message that is not an array (the transport says where it went)."""
        raise NotImplementedError

    # -- the methods -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def loan_array(self, shape: int | tuple[int, ...], dtype: Any, *,
                   timeout: float | None = None) -> Iterator[Array]:
        """Reserve an array in shared memory, fill it in place; the block's normal exit publishes it.

        ``with ch.loan_array((480, 640), "u1") as a: a[:] = frame`` — received by
        :meth:`recv_array`. The elements are 16-byte aligned. As with ``loan``, an
        exception publishes nothing, and the array must not be used after the block.
        """
        import numpy as np

        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError("loan_array: object arrays need pickle; use codec='pickle'")
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in dims):
            raise InvalidArgument(f"loan_array: shape {shape!r} must be non-negative integers")
        head = array_header(dt, dims)
        count = 1
        for d in dims:
            count *= d
        with self.loan(len(head) + count * dt.itemsize, timeout=timeout) as buf:
            buf[:len(head)] = head
            yield np.frombuffer(buf, dtype=dt, count=count, offset=len(head)).reshape(dims)

    def send_array(self, array: Any, *, timeout: float | None = None) -> None:
        """Send a numpy array (dtype and shape travel with it; no pickle; one copy)."""
        import numpy as np

        arr = np.asarray(array)
        if arr.dtype.hasobject:
            raise TypeError("send_array: object arrays need pickle; use codec='pickle'")
        if arr.ndim > MAX_DIMS:
            raise InvalidArgument(f"send_array: {arr.ndim} dimensions (limit {MAX_DIMS})")
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        head = array_header(arr.dtype, arr.shape)
        self._send_parts((head, arr.reshape(-1).view(np.uint8)), len(head) + arr.nbytes, Deadline.of(timeout))

    def recv_array(self, *, timeout: float | None = None, copy: bool = True) -> Array:
        """Receive an array sent with :meth:`send_array` or :meth:`loan_array`.

        ``copy=False`` returns a read-only array over shared memory: the message stays held
        (other consumers or publishers wait for it) until the array is garbage collected.
        A message that is not an array raises ``ProtocolError`` saying what arrived (and
        whether it stayed for ``recv()``).
        """
        import numpy as np

        mv = self._recv_array_view(Deadline.of(timeout), copy)
        try:
            parsed = parse_array_header(mv)
            if isinstance(parsed, str):
                raise self._not_an_array(mv, parsed)
            dt, shape, offset = parsed
            try:
                dtype = np.dtype(dt)
                count = 1
                for d in shape:
                    count *= d
                if offset + count * dtype.itemsize != mv.nbytes:
                    raise ValueError(f"{mv.nbytes} bytes do not hold {shape} of {dtype}")
            except (TypeError, ValueError) as e:
                raise self._not_an_array(mv, f"an array header that does not describe the message ({e})") from None
            arr = np.frombuffer(mv, dtype=dtype, count=count, offset=offset).reshape(shape)
            if not copy:
                return arr
            out = arr.copy()
            del arr
        except BaseException:
            mv.release()
            raise
        mv.release()
        return out
