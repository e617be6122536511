"""Names, keys, paths, modes, sizes, timeouts and URLs: validated before any system call.

Contract:

* Every public entry point passes user input through one of these checks
  first, so bad input raises :class:`kipc.InvalidArgument` (or ``TypeError``)
  and no kernel object is touched.
* Names (POSIX shm / mq / semaphore names, ring names, runtime-dir names) are
  1..200 characters of ``[A-Za-z0-9_.@+-]``, not starting with ``-`` or ``.``:
  no ``/``, no ``..``, no NUL or control characters.
* SysV keys are integers in ``key_t`` (signed 32-bit), given as ``1234`` or
  ``0x4d2``; ``0`` is ``IPC_PRIVATE`` and is only reachable by asking for it.
* Numbers given as text (keys, ports, sizes, modes, uids, timeouts, counts in
  URL queries) go through one parser each (:func:`parse_int`,
  :func:`parse_seconds`, :func:`parse_size`, :func:`parse_octal`): ASCII digits
  only, ``0x`` hex where a key or id is meant. No spaces, no ``+``, no ``_``,
  no full-width or other Unicode digits (``int()`` accepts all of those, so a
  URL could otherwise name a key nobody wrote).
* The runtime directory is ``$XDG_RUNTIME_DIR/kipc`` or ``/tmp/kipc-<uid>``,
  created 0700 and verified to be a real directory owned by us with no
  group/other bits (a planted directory or symlink is refused).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument, PermissionDenied

__all__ = [
    "DEFAULT_DIR_MODE",
    "DEFAULT_MODE",
    "ParsedURL",
    "parse_bool",
    "parse_float",
    "parse_int",
    "parse_octal",
    "parse_seconds",
    "parse_size",
    "parse_url",
    "runtime_dir",
    "validate_key",
    "validate_mode",
    "validate_name",
    "validate_path",
    "validate_size",
    "validate_timeout",
]
# scratch names (namespace, unique_name, unique_key, issued_keys) are re-exported by kipc.testing

DEFAULT_MODE = 0o600
DEFAULT_DIR_MODE = 0o700
NAME_MAX = 200
KEY_MIN, KEY_MAX = -(2**31), 2**31 - 1
PATH_MAX = 4096

_NAME_RE = re.compile(r"[A-Za-z0-9_@+][A-Za-z0-9_.@+-]*\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def validate_name(name: object, *, what: str = "name", max_len: int = NAME_MAX) -> str:
    """A portable object name (no ``/``, ``..``, NUL, control chars; ≤ max_len)."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be str, not {type(name).__name__}")
    if not name:
        raise InvalidArgument(f"{what} is empty")
    if len(name) > max_len:
        raise InvalidArgument(f"{what} is {len(name)} characters; the limit is {max_len}")
    if _CONTROL_RE.search(name):
        raise InvalidArgument(f"{what} {name!r} contains a NUL or control character")
    if "/" in name:
        raise InvalidArgument(f"{what} {name!r} contains '/'")
    if ".." in name:
        raise InvalidArgument(f"{what} {name!r} contains '..'")
    if not _NAME_RE.match(name):
        raise InvalidArgument(
            f"{what} {name!r} is not allowed: use letters, digits and _.@+- "
            "(not starting with '-' or '.')"
        )
    return name


_INT_RE = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|[0-9]+)\Z", re.ASCII)
_DEC_RE = re.compile(r"-?[0-9]+\Z", re.ASCII)
_OCT_RE = re.compile(r"(?:0[oO])?[0-7]+\Z", re.ASCII)
_FLOAT_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z", re.ASCII)


def parse_int(value: object, *, what: str, hex: bool = True, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """An int, or text of one: ASCII decimal (``-12``), or ``0x`` hex when ``hex``; within the bounds.

    The one parser for numbers written in URLs and options: ``int()`` would also
    take ``" 12 "``, ``"+5"``, ``"1_2"`` and full-width digits (U+FF11...).
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be int, not bool")
    if isinstance(value, str):
        if not (_INT_RE if hex else _DEC_RE).match(value):
            form = "a decimal or 0x-hex integer" if hex else "a decimal integer"
            raise InvalidArgument(f"{what} {value!r} is not {form} (ASCII digits only)")
        number = int(value, 16) if "x" in value.lower() else int(value, 10)
    elif isinstance(value, int):
        number = value
    else:
        raise TypeError(f"{what} must be int or str, not {type(value).__name__}")
    if minimum is not None and number < minimum:
        raise InvalidArgument(f"{what} {number} is below the minimum {minimum}")
    if maximum is not None and number > maximum:
        raise InvalidArgument(f"{what} {number} is above the maximum {maximum}")
    return number


def parse_octal(value: object, *, what: str = "mode") -> int:
    """Permission bits as an int, or as octal text (``600``, ``0600``, ``0o600``; ASCII only)."""
    if isinstance(value, str):
        if not _OCT_RE.match(value):
            raise InvalidArgument(f"{what} {value!r} is not an octal number such as 600")
        return int(value[2:] if value[1:2] in ("o", "O") else value, 8)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int (e.g. 0o600) or octal text, not {type(value).__name__}")
    return value


def parse_float(value: object, *, what: str) -> Any:
    """A number, or text of a non-negative one in ASCII (``10``, ``0.5``); ``float()`` takes `` 1e3``, ``nan``."""
    if isinstance(value, str):
        if not _FLOAT_RE.match(value):
            raise InvalidArgument(f"{what} {value!r} is not a number such as 10 or 0.5 (ASCII digits only)")
        return float(value)
    return value


def parse_seconds(value: object, *, what: str = "timeout") -> float | None:
    """A timeout given in code (``None``/number) or in a URL (ASCII ``10``, ``0.5``); then :func:`validate_timeout`."""
    value = parse_float(value, what=what)
    try:
        return validate_timeout(value)
    except TypeError:
        raise TypeError(f"{what} must be None or a number of seconds, not {type(value).__name__}") from None


def validate_key(key: object, *, allow_private: bool = False) -> int:
    """A SysV IPC key: int or decimal/``0x`` text (see :func:`parse_int`) within ``key_t``."""
    if isinstance(key, bool):
        raise TypeError("key must be int or str, not bool")
    if isinstance(key, str):
        if not _INT_RE.match(key):
            raise InvalidArgument(f"key {key!r} is not a decimal or 0x-hex integer (ASCII digits only)")
        value = parse_int(key, what="key")
    elif isinstance(key, int):
        value = key
    else:
        raise TypeError(f"key must be int or str, not {type(key).__name__}")
    if value > KEY_MAX and value <= 2**32 - 1:
        value -= 2**32  # accept unsigned spellings such as 0xffffffff, as ipcs prints them
    if not KEY_MIN <= value <= KEY_MAX:
        raise InvalidArgument(f"key {key!r} is outside key_t ({KEY_MIN}..{2**32 - 1})")
    if value == 0 and not allow_private:
        raise InvalidArgument("key 0 is IPC_PRIVATE; ask for a private object explicitly")
    return value


def validate_path(path: object, *, what: str = "path", max_bytes: int = PATH_MAX) -> str:
    """An absolute filesystem path without NUL/control characters or ``..`` components."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{what} must be str or os.PathLike, not {type(path).__name__}")
    if not path:
        raise InvalidArgument(f"{what} is empty")
    if _CONTROL_RE.search(path):
        raise InvalidArgument(f"{what} {path!r} contains a NUL or control character")
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} {path!r} must be absolute")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{what} {path!r} contains a '..' component")
    if path.endswith("/"):
        raise InvalidArgument(f"{what} {path!r} must name an entry, not end with '/'")
    size = len(os.fsencode(path))
    if size > max_bytes:
        raise InvalidArgument(f"{what} is {size} bytes; the limit is {max_bytes}")
    return path


def validate_mode(mode: object) -> int:
    """Permission bits 0..0o777 (no setuid/setgid/sticky); octal text from a URL is accepted."""
    if isinstance(mode, str):
        mode = parse_octal(mode)
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"mode must be int (e.g. 0o600), not {type(mode).__name__}")
    if not 0 <= mode <= 0o777:
        raise InvalidArgument(f"mode {mode:#o} is outside 0..0o777")
    if not mode & 0o600 == 0o600:
        raise InvalidArgument(f"mode {mode:#o} must at least allow the owner to read and write")
    return mode


def validate_timeout(timeout: object) -> float | None:
    """``None`` (block), ``0`` (never block) or a finite positive number of seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, not {type(timeout).__name__}")
    try:
        t = float(timeout)
    except OverflowError:  # an int beyond a float (10**400)
        raise InvalidArgument(f"timeout of {len(str(abs(timeout)))} digits is absurd (> "
                              f"{threading.TIMEOUT_MAX:.0f} s); use None to block") from None
    if math.isnan(t) or t < 0:
        raise InvalidArgument(f"timeout {timeout!r} must be None or >= 0")
    if t > threading.TIMEOUT_MAX:
        raise InvalidArgument(f"timeout {timeout!r} is absurd (> {threading.TIMEOUT_MAX:.0f} s); use None to block")
    return t


def format_seconds(t: float | None) -> str:
    """A timeout as the user wrote it: 10 -> "10", 0.25 -> "0.25", 9.99999 -> "9.99999" (no rounding)."""
    if t is None:
        return "inf"
    text = repr(float(t))
    return text[:-2] if text.endswith(".0") else text


def lock_deadline(blocking: bool, timeout: float | None) -> float:
    """``threading.Lock.acquire``'s argument rules (``-1``/None = forever; no timeout without
    blocking); returns the absolute monotonic deadline (``inf`` = forever). For the lock types."""
    if timeout is None:
        timeout = -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not blocking and timeout != -1:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0 and timeout != -1:
        raise ValueError("timeout value must be a non-negative number")
    return math.inf if timeout == -1 else time.monotonic() + timeout


def validate_size(value: object, *, what: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer byte count (or ``'64MiB'``-style string) within bounds."""
    if isinstance(value, str):
        value = parse_size(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    if value < minimum:
        raise InvalidArgument(f"{what} {value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{what} {value} is above the maximum {maximum}")
    return value


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"([0-9]+)([A-Za-z]*)\Z", re.ASCII)  # ASCII: \d takes full-width digits


def parse_size(text: str) -> int:
    """``"4096"``, ``"64KiB"``, ``"1MB"`` -> bytes (ASCII digits, no spaces)."""
    if not isinstance(text, str):
        raise TypeError(f"size must be str, not {type(text).__name__}")
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidArgument(f"size {text!r} is not a number with an optional unit (KiB, MiB, GiB, KB, MB, GB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_bool(value: object, *, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"{what} {value!r} is not a boolean")


@dataclass(frozen=True)
class ParsedURL:
    """A split kipc URL. ``query`` holds the ``?k=v`` options as strings."""

    url: str
    scheme: str
    netloc: str
    path: str
    query: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """netloc + path: what the mechanism addresses (key, name, host:port/...)."""
        return self.netloc + self.path


def merge_query(parsed: ParsedURL, options: dict[str, Any]) -> dict[str, Any]:
    """Query-string options merged with keyword options (the same name both ways is an error)."""
    merged = dict(options)
    for k, v in parsed.query.items():
        if k in merged:
            raise InvalidArgument(f"{parsed.url}: option {k!r} given both in the URL and as a keyword")
        merged[k] = v
    return merged


_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]*\Z")


def parse_url(url: object) -> ParsedURL:
    """Split ``scheme://netloc/path?opts``; validation of the parts is the transport's."""
    if not isinstance(url, str):
        raise TypeError(f"url must be str, not {type(url).__name__}")
    if len(url) > PATH_MAX + 256:
        raise InvalidArgument(f"url is {len(url)} characters; too long")
    if _CONTROL_RE.search(url):
        raise InvalidArgument(f"url {url!r} contains a NUL or control character")
    if "://" not in url:
        raise InvalidArgument(f"url {url!r} has no scheme (expected e.g. fifo:///tmp/x, ring://name)")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if not _SCHEME_RE.match(scheme):
        raise InvalidArgument(f"url {url!r} has an invalid scheme {scheme!r}")
    if "#" in rest:
        raise InvalidArgument(f"url {url!r} must not contain a fragment ('#')")
    rest, _, qs = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    path = slash + path
    try:
        pairs = urllib.parse.parse_qsl(qs, keep_blank_values=True, strict_parsing=bool(qs))
    except ValueError:
        raise InvalidArgument(f"url {url!r} has a malformed query string") from None
    query: dict[str, str] = {}
    for k, v in pairs:
        if k in query:
            raise InvalidArgument(f"url {url!r} repeats option {k!r}")
        query[k] = v
    return ParsedURL(url=url, scheme=scheme, netloc=urllib.parse.unquote(netloc),
                     path=urllib.parse.unquote(path), query=query)


_runtime_lock = threading.Lock()
_runtime_cache: dict[int, str] = {}


def _check_private_dir(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(f"runtime dir {path} is not a directory (symlink or file planted?)")
    if st.st_uid != os.geteuid():
        raise PermissionDenied(f"runtime dir {path} is owned by uid {st.st_uid}, not us ({os.geteuid()})")
    if st.st_mode & 0o077:
        raise PermissionDenied(f"runtime dir {path} has mode {stat.S_IMODE(st.st_mode):#o}; expected 0700")


def private_dir(path: str) -> str:
    """Create ``path`` 0700 if missing (whatever the umask) and verify it is ours."""
    try:
        os.mkdir(path, DEFAULT_DIR_MODE)
        os.chmod(path, DEFAULT_DIR_MODE)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    _check_private_dir(path)
    return path


def runtime_dir(sub: str | None = None) -> str:
    """kipc's private runtime directory (optionally a private subdirectory of it)."""
    uid = os.geteuid()
    with _runtime_lock:
        base = _runtime_cache.get(uid)
        if base is None or not os.path.isdir(base):
            override = os.environ.get("KIPC_RUNTIME_DIR")
            xdg = os.environ.get("XDG_RUNTIME_DIR")
            if override:
                base = validate_path(override, what="KIPC_RUNTIME_DIR")
            elif xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
                base = os.path.join(xdg, "kipc")
            else:
                base = f"/tmp/kipc-{uid}"
            private_dir(base)
            _runtime_cache[uid] = base
    if sub is None:
        return base
    return private_dir(os.path.join(base, validate_name(sub, what="runtime subdirectory")))


# -- scratch names: objects of one run (a test, ``kipc tour``, ``kipc bench``) ---------------------------
# They carry the run's namespace (``KIPC_TEST_NS``), so a leak check can tell whose an object is.
_counter = itertools.count()
_issued_keys: set[int] = set()


def namespace() -> str:
    """This run's namespace (``KIPC_TEST_NS``), or one made for this process."""
    ns = os.environ.get("KIPC_TEST_NS")
    if not ns:
        ns = f"kipct{os.getpid()}x{random.randrange(16**6):06x}"
        os.environ["KIPC_TEST_NS"] = ns
    return ns


def unique_name(prefix: str = "t") -> str:
    """A name unique to this run: ``<namespace>-<prefix><n>`` (valid for every scheme)."""
    return f"{namespace()}-{prefix}{next(_counter)}"


def _sysv_keys_in_use() -> set[int]:
    keys: set[int] = set()
    for kind in ("msg", "shm", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                next(f)
                for line in f:
                    keys.add(int(line.split()[0]))
        except OSError:
            pass
    return keys


def unique_key() -> int:
    """A SysV key no object uses now, remembered as this run's (see :func:`issued_keys`)."""
    used = _sysv_keys_in_use()
    while True:
        key = random.randrange(0x4B000000, 0x4BFFFFFF)
        if key not in used and key not in _issued_keys:
            _issued_keys.add(key)
            return key


def issued_keys() -> frozenset[int]:
    return frozenset(_issued_keys)
