"""``python -m kipc``: the ``kipc`` CLI; ``python -m kipc --include`` prints the C include directory.

The directory holds ``kipc_ring.h`` (the C API of ring://, see its header comment):
``gcc prog.c -I"$(python -m kipc --include)" -lpthread``.
"""
import os
import sys

if sys.argv[1:] == ["--include"]:
    print(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native", "include"))
    raise SystemExit(0)

from kipc.cli.main import main  # after the --include fast path: printing a path imports no CLI

raise SystemExit(main())
