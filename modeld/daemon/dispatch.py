"""How a method of the table is called: the context a handler gets, the method's
description, its params checked by its pydantic model, access checked, and the result
turned into JSON; the one mapping of the exception family to JSON-RPC errors."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from jsonrpcserver import Error, Result, Success
from pydantic import BaseModel, ValidationError

from modeld.core.errors import ModeldError, PermissionDenied
from modeld.daemon.access import AccessPolicy, Caller
from modeld.daemon.params import Params
from modeld.engine.engine import Engine

log = structlog.get_logger("modeld.daemon.dispatch")

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
                return error(exc)
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
            return error(exc)


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
            return error(exc)


def error(exc: ModeldError) -> Result:
    """The one mapping of the exception family to a JSON-RPC error."""
    return Error(exc.code, exc.message, exc.data)
