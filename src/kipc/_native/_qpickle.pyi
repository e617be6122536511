# Stubs for kipc._native._qpickle (what "plain" means and why C: _qpickle.c). Imported only via kipc._platform.native.
from typing import Any

BIG_BYTES: int
MAX_ITEMS: int

def plain_dumps(obj: Any, /) -> bytes | None: ...
def plain_dumps_many(objs: list[Any], /) -> list[bytes] | None: ...
