"""The socket API: NDJSON JSON-RPC 2.0 over a Unix stream socket, through jsonrpcserver.

Handlers only call the Supervisor. ModeldError is mapped to a JSON-RPC error here,
and nowhere else.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import structlog
from jsonrpcserver import (
    Error,
    Result,
    Success,
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
    ValidationError,
)

from modeld import __version__
from modeld.core.errors import ModeldError, PermissionDenied
from modeld.core.jsonraw import RawJSON, response_line
from modeld.daemon.access import AccessPolicy, Caller
from modeld.engine.supervisor import Supervisor

log = structlog.get_logger("modeld.daemon.rpc")

MAX_MESSAGE_BYTES = 1024 * 1024
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600


@dataclass(frozen=True)
class Context:
    """What a handler gets: the Supervisor, who is calling, and what they may do."""

    supervisor: Supervisor
    caller: Caller
    policy: AccessPolicy
    # Gives this connection its one subscription (False: it had one already).
    attach: Callable[[], bool] = lambda: False
    # The connection: leases belong to it and end when it closes.
    owner: int = 0
    # Pushes a model's log lines to this connection as `log` notifications until the
    # backend ends or the connection closes (False: it follows that model already).
    follow: Callable[[str, AsyncIterator[str]], bool] = lambda model, lines: False

    @property
    def trusted(self) -> bool:
        """May see what backends printed (logs, failure lines): with access control on,
        only the callers that may change models (vLLM logs its --api-key, and prompts)."""
        return self.policy.may_mutate(self.caller)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(_Params):
    """Methods that take no parameters."""


class ModelParams(_Params):
    """`stop`: a model name."""

    model: str = Field(min_length=1)


class LogsParams(ModelParams):
    """`logs`: a model, how many of its last lines, and whether to follow new ones."""

    lines: int = Field(default=50, ge=1, le=10_000)
    follow: bool = False


class LoadParams(ModelParams):
    """`switch`, `start`, `restart`: a model, whether to wait for health, and for how long."""

    wait: bool = True
    timeout: float | None = Field(default=None, gt=0)


class SwitchParams(LoadParams):
    """`switch`: also `force`, to evict models serving requests without draining them."""

    force: bool = False


class StopParams(ModelParams):
    """`stop`: a model, and `force` to stop it under its requests in flight."""

    force: bool = False


class AcquireParams(ModelParams):
    """`acquire`: a model, and how long to wait for it to run (default: no limit)."""

    timeout_s: float | None = Field(default=None, gt=0)
    # False: lease only a model that runs or is loading; one that would need a load or a
    # wake is refused at once (`would_load`), so a router can budget the loads it causes.
    load: bool = True


class ReleaseParams(_Params):
    """`release`: a lease this connection holds."""

    lease: str = Field(min_length=1, max_length=100)


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


Handler = Callable[..., Awaitable[Result]]
P = TypeVar("P", bound=_Params)


def _validated(params_type: type[P], args: tuple[Any, ...], kwargs: dict[str, Any]) -> P | Result:
    """The params as `params_type`, or the Invalid params error to answer with."""
    if args:
        return Error(
            INVALID_PARAMS,
            "Invalid params",
            {"error": "invalid_params", "reason": "params must be an object"},
        )
    try:
        return params_type.model_validate(kwargs)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in exc.errors()
        ]
        return Error(
            INVALID_PARAMS, "Invalid params", {"error": "invalid_params", "problems": problems}
        )


def _check_access(context: Context, name: str) -> None:
    """PermissionDenied (logged) for a caller that may read but not use `name`."""
    if not context.trusted:
        log.warning("rpc.refused", method=name, reason="not allowed", **context.caller.as_log())
        raise PermissionDenied(
            f"permission denied: this uid may read but not use {name} "
            "(daemon.allow_uids / allow_groups)",
            uid=context.caller.uid,
            method=name,
        )


def _query(
    params_type: type[P],
    call: Callable[[Context, P], Any],
    name: str = "",
    trusted: bool = False,
) -> Callable[..., Result]:
    """A handler answered synchronously from memory (queries, `release`, and an
    `acquire` that can be granted at once)."""

    no_params = params_type.model_construct() if not params_type.model_fields else None

    def handler(context: Context, *args: Any, **kwargs: Any) -> Result:
        if no_params is not None and not args and not kwargs:
            return Success(call(context, no_params))  # nothing to validate
        params = _validated(params_type, args, kwargs)
        if not isinstance(params, params_type):
            return params
        try:
            if trusted:
                _check_access(context, name)
            return Success(call(context, params))
        except ModeldError as exc:
            return Error(exc.code, exc.message, exc.data)

    # jsonrpcserver binds the params against the handler's signature on every call;
    # a ready-made signature spares inspect from rebuilding it each time.
    handler.__signature__ = HANDLER_SIGNATURE  # type: ignore[attr-defined]
    return handler


def _method(
    name: str, params_type: type[P], call: Callable[[Context, P], Any], trusted: bool = False
) -> Handler:
    """Validate params, check access, call the Supervisor, map ModeldError to its code.
    `trusted`: only for callers that may change models (when access control is on)."""

    async def handler(context: Context, *args: Any, **kwargs: Any) -> Result:
        params = _validated(params_type, args, kwargs)
        if not isinstance(params, params_type):
            return params
        try:
            if trusted:
                _check_access(context, name)
            result = call(context, params)
            return Success(await result if inspect.isawaitable(result) else result)
        except ModeldError as exc:
            return Error(exc.code, exc.message, exc.data)

    handler.__signature__ = HANDLER_SIGNATURE  # type: ignore[attr-defined]
    return handler


HANDLER_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("context", inspect.Parameter.POSITIONAL_ONLY),
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)


def _ping(ctx: Context, _: NoParams) -> dict[str, Any]:
    return {"pong": True, "version": __version__}


def _status(ctx: Context, _: NoParams) -> RawJSON:
    return ctx.supervisor.status_json(redacted=not ctx.trusted)


def _gpu(ctx: Context, _: NoParams) -> dict[str, Any]:
    return ctx.supervisor.gpu()


def _models(ctx: Context, _: NoParams) -> list[dict[str, Any]]:
    return ctx.supervisor.models()


async def _switch(ctx: Context, p: SwitchParams) -> dict[str, Any]:
    return await ctx.supervisor.switch(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log(), force=p.force
    )


async def _start(ctx: Context, p: LoadParams) -> dict[str, Any]:
    return await ctx.supervisor.start(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _stop(ctx: Context, p: StopParams) -> dict[str, Any]:
    return await ctx.supervisor.stop(p.model, caller=ctx.caller.as_log(), force=p.force)


async def _acquire(ctx: Context, p: AcquireParams) -> dict[str, Any]:
    return await ctx.supervisor.acquire(
        p.model, owner=ctx.owner, timeout=p.timeout_s, caller=ctx.caller.as_log(), load=p.load
    )


def _acquire_now(ctx: Context, p: AcquireParams) -> dict[str, Any] | None:
    return ctx.supervisor.acquire_now(p.model, owner=ctx.owner, caller=ctx.caller.as_log())


def _release(ctx: Context, p: ReleaseParams) -> dict[str, Any]:
    return ctx.supervisor.release(p.lease, owner=ctx.owner)


async def _restart(ctx: Context, p: LoadParams) -> dict[str, Any]:
    return await ctx.supervisor.restart(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _subscribe(ctx: Context, _: NoParams) -> dict[str, Any]:
    # One subscription per connection: subscribing again changes nothing.
    return {"subscribed": True, "already": not ctx.attach()}


async def _logs(ctx: Context, p: LogsParams) -> dict[str, Any]:
    if p.follow:
        # The last lines come first as notifications, then each new one: no gap between.
        already = not ctx.follow(p.model, ctx.supervisor.follow_logs(p.model, p.lines))
        return {"model": p.model, "following": True, "already": already}
    return await ctx.supervisor.logs(p.model, p.lines)


async def _reload(ctx: Context, _: NoParams) -> dict[str, Any]:
    return await ctx.supervisor.reload(caller=ctx.caller.as_log())


_QUERIES: dict[str, Callable[[Context, NoParams], Any]] = {
    "ping": _ping,
    "status": _status,
    "gpu": _gpu,
    "models": _models,
}
# Answered from memory at once, dispatched synchronously, inline: the read-only methods,
# and `release` (so a lease always ends promptly, however busy its connection is).
QUERY_METHODS = {
    **{name: _query(NoParams, call) for name, call in _QUERIES.items()},
    "release": _query(ReleaseParams, _release),
}
# `acquire` first tries this: a model that runs and is not draining is leased at once,
# inline; a null result means it must wait, and the call goes on as a task.
ACQUIRE_NOW = {"acquire": _query(AcquireParams, _acquire_now, "acquire", trusted=True)}
METHODS: dict[str, Handler] = {
    **{name: _method(name, NoParams, call) for name, call in _QUERIES.items()},
    "switch": _method("switch", SwitchParams, _switch, trusted=True),
    "acquire": _method("acquire", AcquireParams, _acquire, trusted=True),
    "release": _method("release", ReleaseParams, _release),
    "start": _method("start", LoadParams, _start, trusted=True),
    "stop": _method("stop", StopParams, _stop, trusted=True),
    "reload": _method("reload", NoParams, _reload, trusted=True),
    "subscribe": _method("subscribe", NoParams, _subscribe),
    "logs": _method("logs", LogsParams, _logs, trusted=True),
    "restart": _method("restart", LoadParams, _restart, trusted=True),
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
    """A single `acquire` call (it waits, but cheaply: counted apart from other tasks)."""
    return isinstance(request, dict) and request.get("method") == "acquire"


def may_take_long(request: Any) -> bool:
    """A batch, or a call of a method that waits (anything else is answered at once)."""
    if isinstance(request, list):
        return True
    if not isinstance(request, dict):
        return False
    method = request.get("method")
    return isinstance(method, str) and method in METHODS and method not in QUERY_METHODS


def is_query(request: Any) -> bool:
    """A single request for a read-only method (a `method` of any other type is not)."""
    if not isinstance(request, dict):
        return False
    method = request.get("method")
    return isinstance(method, str) and method in QUERY_METHODS


def _options(request: Any, context: Context) -> dict[str, Any]:
    """jsonrpcserver's dispatch options for a line parsed already (or UNPARSED)."""
    return {
        "context": context,
        # Parsed once already; what did not parse is left to jsonrpcserver to report.
        "deserializer": json.loads if request is UNPARSED else lambda _: request,
        "validator": validate_envelope,
    }


def answer_now(text: str, request: Any, context: Context) -> bytes | None:
    """The answer to a single `acquire` when it can be given at once (a lease, or an
    error); None when the call must wait for its model (or is a notification, which
    nobody could release: it takes the waiting path, as before)."""
    if "id" not in request:
        return None
    dispatched = dispatch_to_serializable(text, ACQUIRE_NOW, **_options(request, context))
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
        dispatched = dispatch_to_serializable(text, QUERY_METHODS, **options)
    else:
        dispatched = await async_dispatch_to_serializable(text, METHODS, **options)
    return response_line(dispatched)
