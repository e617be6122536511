"""Entry point of the ``kipc`` command: parse, dispatch to ``kipc.cli.<verb>.run``, map errors to exit codes.

Exit codes: 0 success; 1 operational error (missing object, permission,
timeout, peer gone...); 2 usage error (bad flag, bad URL, unknown scheme,
invalid name or key). Errors print one line ``kipc: error: ...``; ``--debug``
adds the traceback. Ctrl-C exits 130 quietly; a closed stdout (``| head``)
exits quietly too.
"""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import InvalidArgument, KipcError
from ._output import Output, error_line
from .args import UsageError, parse_args

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        try:
            args = parse_args(argv)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0) if not isinstance(e.code, str) else 2
        out = Output(json_mode=getattr(args, "json", False))
        verb = importlib.import_module(f"kipc.cli.{args.verb}")
        return int(verb.run(args, out))
    except BrokenPipeError as e:
        if isinstance(e, KipcError):
            return _fail(e, 1, debug)
        # the reader of our stdout went away (kipc recv -f | head): not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except UsageError as e:
        return _fail(e, 2, debug)
    except InvalidArgument as e:
        return _fail(e, 2, debug)
    except (KipcError, OSError, TypeError, ValueError, ImportError, RuntimeError) as e:
        return _fail(e, 1, debug)
    except KeyboardInterrupt:
        return 130


def _fail(exc: BaseException, code: int, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, (KipcError, UsageError)):
        text = f"{type(exc).__name__}: {text}"
    error_line(text)
    return code
