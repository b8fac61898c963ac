"""The socket API: NDJSON JSON-RPC 2.0 over a Unix stream socket, dispatched through
jsonrpcserver's public API from the method table (methods.py), whose handlers map
ModeldError to a JSON-RPC error, there and nowhere else. Lines are parsed once here
(the server routes by method first), so jsonrpcserver is given that parse, and
pydantic's cheaper envelope check, through its documented `deserializer` and
`validator` options."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import structlog
from jsonrpcserver import (
    async_dispatch_to_serializable,
    dispatch_to_serializable,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
)

from modeld.core.jsonraw import response_line
from modeld.daemon.dispatch import AsyncHandler, Context, SyncHandler
from modeld.daemon.methods import API

log = structlog.get_logger("modeld.daemon.rpc")

MAX_MESSAGE_BYTES = 1024 * 1024
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600


class _Envelope(BaseModel):
    """A JSON-RPC 2.0 request as the spec's schema describes it (params checked later)."""

    model_config = ConfigDict(extra="forbid")

    jsonrpc: Literal["2.0"]
    method: StrictStr
    params: dict[str, Any] | list[Any] = Field(default_factory=dict)
    id: StrictStr | StrictInt | StrictFloat | None = None


_ENVELOPES: TypeAdapter[Any] = TypeAdapter(
    _Envelope | Annotated[list[_Envelope], Field(min_length=1)]
)


def validate_envelope(request: Any) -> Any:
    """jsonrpcserver's validator, done by pydantic: far cheaper than its JSON-schema check."""
    _ENVELOPES.validate_python(request)
    return request


# The table, as jsonrpcserver's method maps: every method (its handler may wait), the
# inline ones (answered synchronously from memory: read-only methods, and `release`, so
# a lease always ends promptly however busy its connection is), and the answers tried
# first, inline (`acquire` on a model that runs and is not draining; a null result
# means it must wait, and the call goes on as a task).
METHODS: dict[str, Callable[..., Any]] = {m.name: AsyncHandler(m, m.call) for m in API}
INLINE: dict[str, Callable[..., Any]] = {m.name: SyncHandler(m, m.call) for m in API if m.inline}
NOW: dict[str, Callable[..., Any]] = {
    m.name: SyncHandler(m, m.now) for m in API if m.now is not None
}


UNPARSED = object()


def parse(line: bytes) -> tuple[str | None, Any]:
    """The line as text and as JSON (UNPARSED if it is not JSON; None text if not UTF-8)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, UNPARSED
    try:
        return text, _DECODER.decode(text)
    except (ValueError, RecursionError):
        return text, UNPARSED


def _finite(text: str) -> float:
    """A JSON number as a float, refused when it overflows (`1e400` would be echoed back
    as `Infinity`, which is not JSON)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _no_constant(text: str) -> float:
    """NaN and Infinity are not JSON."""
    raise ValueError(f"{text} is not JSON")


# One decoder for every line (json.loads with options would build one per call).
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def error_line(code: int, message: str, data: dict[str, Any], request: Any = None) -> bytes:
    """A JSON-RPC error answer line: to `request` (a single call), else not tied to one
    (id null)."""
    request_id = request.get("id") if isinstance(request, dict) else None
    error = {"code": code, "message": message, "data": data}
    body = {"jsonrpc": "2.0", "error": error, "id": request_id}
    return json.dumps(body).encode() + b"\n"


def is_acquire(request: Any) -> bool:
    """A single call of a method with an inline answer first (`acquire`: it may wait,
    but cheaply, counted apart from other tasks)."""
    return isinstance(request, dict) and request.get("method") in NOW


def may_take_long(request: Any) -> bool:
    """A batch, or a call of a method that waits (anything else is answered at once)."""
    if isinstance(request, list):
        return True
    if not isinstance(request, dict):
        return False
    method = request.get("method")
    return isinstance(method, str) and method in METHODS and method not in INLINE


def is_query(request: Any) -> bool:
    """A single request for a read-only method (a `method` of any other type is not)."""
    if not isinstance(request, dict):
        return False
    method = request.get("method")
    return isinstance(method, str) and method in INLINE


def _options(request: Any, context: Context) -> dict[str, Any]:
    """jsonrpcserver's dispatch options for a line parsed already (a line that did not
    parse is refused before any dispatch)."""
    return {"context": context, "deserializer": lambda _: request, "validator": validate_envelope}


def answer_now(text: str, request: Any, context: Context) -> bytes | None:
    """The answer to a single `acquire` when it can be given at once (a lease, or an
    error); None when the call must wait for its model (or is a notification, which
    nobody could release: it takes the waiting path, as before)."""
    if "id" not in request:
        return None
    dispatched = dispatch_to_serializable(text, NOW, **_options(request, context))
    if isinstance(dispatched, dict) and "result" in dispatched and dispatched["result"] is None:
        return None
    return response_line(dispatched)


async def answer(text: str | None, request: Any, context: Context) -> bytes | None:
    """The answer line to one request line (parsed already, or UNPARSED), through
    jsonrpcserver's public dispatch; None for notifications."""
    if text is None:
        return error_line(-32700, "Parse error", {"error": "not_utf8"})
    if request is UNPARSED:
        # Refused here, not by jsonrpcserver's own parse, which would take 1e400 or NaN.
        return error_line(-32700, "Parse error", {"error": "not_json"})
    options = _options(request, context)
    if is_query(request):
        # Read-only, answered from memory: dispatched synchronously.
        dispatched = dispatch_to_serializable(text, INLINE, **options)
    else:
        dispatched = await async_dispatch_to_serializable(text, METHODS, **options)
    return response_line(dispatched)
