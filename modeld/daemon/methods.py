"""The JSON-RPC API as one declarative table: each method's name, params model,
result model, whether it changes models (only callers allowed to mutate may call it),
whether it is answered inline from memory, and the engine call behind it. rpc.py
dispatches through jsonrpcserver from this table; `api_schema` turns it into
docs/api.schema.json. Results become JSON here, and nowhere else in the daemon."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from jsonrpcserver import Error, Result, Success
from pydantic import BaseModel, ValidationError

from modeld import __version__
from modeld.core.errors import ModeldError, PermissionDenied
from modeld.core.jsonraw import RawJSON
from modeld.daemon.access import AccessPolicy, Caller
from modeld.daemon.params import (
    AcquireParams,
    HistoryParams,
    LoadParams,
    LogsParams,
    NoParams,
    Params,
    PlanParams,
    ReleaseParams,
    StopParams,
    SwitchParams,
)
from modeld.engine.engine import Engine
from modeld.wire.results import (
    Following,
    HistoryResult,
    LeaseResult,
    LogsResult,
    PlanResult,
    Pong,
    ReleaseResult,
    ReloadResult,
    StopResult,
    Subscribed,
    SwitchResult,
)
from modeld.wire.status import GpuStatus, ModelInfo, Status

log = structlog.get_logger("modeld.daemon.methods")

INVALID_PARAMS = -32602


@dataclass(frozen=True)
class Context:
    """What a handler gets: the Engine, who is calling, and what they may do."""

    engine: Engine
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


P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class Method(Generic[P]):
    """One API method."""

    name: str
    params: type[P]
    result: Any  # the answer's type, for the schema
    call: Callable[[Context, P], Any]
    doc: str
    # Changes models: refused (permission_denied) to callers who may only read.
    mutates: bool = False
    # Answered at once from memory, synchronously, inline (never queued behind others).
    inline: bool = False
    # Tried first, inline: an answer now, or None when the call must wait (`call`).
    now: Callable[[Context, P], Any] | None = None


def _json(value: Any) -> Any:
    """A typed result as JSON, keeping only the fields its outcome set."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, list):
        return [_json(item) for item in value]
    return value


def _validated(method: Method[P], args: tuple[Any, ...], kwargs: dict[str, Any]) -> P | Result:
    """The params as the method's model, or the Invalid params error to answer with."""
    if args:
        return Error(
            INVALID_PARAMS,
            "Invalid params",
            {"error": "invalid_params", "reason": "params must be an object"},
        )
    try:
        return method.params.model_validate(kwargs)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in exc.errors()
        ]
        return Error(
            INVALID_PARAMS, "Invalid params", {"error": "invalid_params", "problems": problems}
        )


def _check_access(method: Method[Any], context: Context) -> None:
    """PermissionDenied (logged) for a caller that may read but not change models."""
    if method.mutates and not context.trusted:
        log.warning(
            "rpc.refused", method=method.name, reason="not allowed", **context.caller.as_log()
        )
        raise PermissionDenied(
            f"permission denied: this uid may read but not use {method.name} "
            "(daemon.allow_uids / allow_groups)",
            uid=context.caller.uid,
            method=method.name,
        )


class _Handler:
    """A method of the table as jsonrpcserver calls it: `handler(context, **params)`.

    jsonrpcserver binds each call's params against `inspect.signature(handler)` before
    calling it; the handler declares that signature (PEP 362's `__signature__`), as
    inspect would otherwise rebuild it on every call, a third of a `status` call's time.
    The params themselves are checked by the method's pydantic model."""

    __signature__ = inspect.Signature(
        [
            inspect.Parameter("context", inspect.Parameter.POSITIONAL_ONLY),
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )

    def __init__(self, method: Method[Any], call: Callable[[Context, Any], Any]) -> None:
        self.method = method
        self.call = call
        # Methods without params (status, ping): nothing to check on each call.
        self.no_params = None if method.params.model_fields else method.params.model_construct()

    def enter(self, context: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's params as the method's model, or the error to answer with (invalid
        params, or a caller who may only read calling a method that mutates)."""
        if self.no_params is not None and not args and not kwargs:
            params: Any = self.no_params
        else:
            params = _validated(self.method, args, kwargs)
        if isinstance(params, self.method.params):
            try:
                _check_access(self.method, context)
            except ModeldError as exc:
                return _error(exc)
        return params


class SyncHandler(_Handler):
    """Answered synchronously, inline (read-only methods, and `now` answers)."""

    def __call__(self, context: Context, *args: Any, **kwargs: Any) -> Result:
        params = self.enter(context, args, kwargs)
        if not isinstance(params, self.method.params):
            return params
        try:
            return Success(_json(self.call(context, params)))
        except ModeldError as exc:
            return _error(exc)


class AsyncHandler(_Handler):
    """May wait (on the engine), as a task of its connection."""

    async def __call__(self, context: Context, *args: Any, **kwargs: Any) -> Result:
        params = self.enter(context, args, kwargs)
        if not isinstance(params, self.method.params):
            return params
        try:
            result = self.call(context, params)
            return Success(_json(await result if inspect.isawaitable(result) else result))
        except ModeldError as exc:
            return _error(exc)


def _error(exc: ModeldError) -> Result:
    """The one mapping of the exception family to a JSON-RPC error."""
    return Error(exc.code, exc.message, exc.data)


def _ping(ctx: Context, _: NoParams) -> Pong:
    return Pong(pong=True, version=__version__)


def _status(ctx: Context, _: NoParams) -> RawJSON:
    return ctx.engine.view.status_json(redacted=not ctx.trusted)


def _gpu(ctx: Context, _: NoParams) -> GpuStatus:
    return ctx.engine.view.gpu()


def _models(ctx: Context, _: NoParams) -> list[ModelInfo]:
    return ctx.engine.view.models()


async def _switch(ctx: Context, p: SwitchParams) -> SwitchResult:
    return await ctx.engine.models.switch(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log(), force=p.force
    )


def _history(ctx: Context, p: HistoryParams) -> HistoryResult:
    return HistoryResult(entries=ctx.engine.models.history(p.model, p.limit))


async def _plan(ctx: Context, p: PlanParams) -> PlanResult:
    return await ctx.engine.models.plan(p.model, force=p.force)


async def _start(ctx: Context, p: LoadParams) -> SwitchResult:
    return await ctx.engine.models.start(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _stop(ctx: Context, p: StopParams) -> StopResult:
    return await ctx.engine.models.stop(p.model, caller=ctx.caller.as_log(), force=p.force)


async def _restart(ctx: Context, p: LoadParams) -> SwitchResult:
    return await ctx.engine.models.restart(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _acquire(ctx: Context, p: AcquireParams) -> LeaseResult:
    return await ctx.engine.leases.acquire(
        p.model,
        owner=ctx.owner,
        timeout=p.timeout_s,
        caller=ctx.caller.as_log(),
        load=p.load,
        request_bytes=p.request_bytes,
    )


def _acquire_now(ctx: Context, p: AcquireParams) -> LeaseResult | None:
    return ctx.engine.leases.acquire_now(
        p.model, owner=ctx.owner, caller=ctx.caller.as_log(), request_bytes=p.request_bytes
    )


def _release(ctx: Context, p: ReleaseParams) -> ReleaseResult:
    return ctx.engine.leases.release(p.lease, owner=ctx.owner, broken=p.broken)


def _subscribe(ctx: Context, _: NoParams) -> Subscribed:
    # One subscription per connection: subscribing again changes nothing.
    return Subscribed(subscribed=True, already=not ctx.attach())


async def _logs(ctx: Context, p: LogsParams) -> LogsResult | Following:
    if p.follow:
        # The last lines come first as notifications, then each new one: no gap between.
        already = not ctx.follow(p.model, ctx.engine.models.follow_logs(p.model, p.lines))
        return Following(model=p.model, following=True, already=already)
    return await ctx.engine.models.logs(p.model, p.lines)


async def _reload(ctx: Context, _: NoParams) -> ReloadResult:
    return await ctx.engine.reload(caller=ctx.caller.as_log())


API: tuple[Method[Any], ...] = (
    Method("ping", NoParams, Pong, _ping, "Is the daemon there, and which version.", inline=True),
    Method(
        "status",
        NoParams,
        Status,
        _status,
        "Every model, the GPU, parking, runtimes.",
        inline=True,
    ),
    Method("gpu", NoParams, GpuStatus, _gpu, "The last GPU reading.", inline=True),
    Method("models", NoParams, list[ModelInfo], _models, "The configured models.", inline=True),
    Method(
        "switch",
        SwitchParams,
        SwitchResult,
        _switch,
        "Make a model the one that answers, stopping or parking no more than it must.",
        mutates=True,
    ),
    Method(
        "history",
        HistoryParams,
        HistoryResult,
        _history,
        "What was done to models and why: state changes with reasons, switches' plans.",
        inline=True,
    ),
    Method(
        "plan",
        PlanParams,
        PlanResult,
        _plan,
        "What a switch to a model would stop, park and start now, and why; changes nothing.",
    ),
    Method(
        "start",
        LoadParams,
        SwitchResult,
        _start,
        "Start a model only if it fits without stopping anything.",
        mutates=True,
    ),
    Method(
        "stop",
        StopParams,
        StopResult,
        _stop,
        "Stop a model once its requests in flight have ended.",
        mutates=True,
    ),
    Method(
        "restart",
        LoadParams,
        SwitchResult,
        _restart,
        "Stop a model and start it again.",
        mutates=True,
    ),
    Method(
        "acquire",
        AcquireParams,
        LeaseResult,
        _acquire,
        "A lease on a model once it runs and answers.",
        mutates=True,
        now=_acquire_now,
    ),
    Method(
        "release",
        ReleaseParams,
        ReleaseResult,
        _release,
        "End a lease this connection holds.",
        inline=True,
    ),
    Method(
        "subscribe",
        NoParams,
        Subscribed,
        _subscribe,
        "Events (state changes, switch progress) as notifications.",
    ),
    Method(
        "logs",
        LogsParams,
        LogsResult | Following,
        _logs,
        "A backend's last lines, or follow them.",
        mutates=True,
    ),
    Method(
        "reload",
        NoParams,
        ReloadResult,
        _reload,
        "Re-read the config file and apply it.",
        mutates=True,
    ),
)
BY_NAME: Mapping[str, Method[Any]] = {method.name: method for method in API}
