# Stubs for kipc._native._reqrep (why and how: _reqrep.c). Imported only via kipc._platform.native.
from collections.abc import Callable
from typing import Any

class Request:
    server: Any
    data: object
    _to: Any
    _rid: int
    _replied: int
    def __init__(self, server: Any, rid: int, to: Any, data: object) -> None: ...
    @property
    def id(self) -> int: ...
    def reply(self, data: Any, *, timeout: float | None = None) -> bool: ...

def _setup(invalid: type[BaseException], deadline: type[BaseException], closed: type[BaseException],
           not_found: type[BaseException], request_type: type[Request], end: Callable[[object], float | None],
           timeout_max: float, liveness: float, /) -> None: ...
def take(server: Any, recv: Callable[..., Any], end: float | None, senders: dict[bytes, Any],
         reply_timeout: float, plain: bool, /) -> Request: ...
def call(client: Any, send: Callable[..., Any], recv: Callable[..., Any], head: bytes, rid: int, payload: Any,
         timeout: float | None, /) -> bytes: ...
