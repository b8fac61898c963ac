"""The socket API: NDJSON JSON-RPC 2.0 over a Unix stream socket, through jsonrpcserver.

Handlers only call the Supervisor. ModeldError is mapped to a JSON-RPC error here,
and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import structlog
from jsonrpcserver import (
    Error,
    Result,
    Success,
    async_dispatch_to_response,
    dispatch_to_response,
)
from jsonrpcserver.dispatcher import create_request, dispatch_request, to_response
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
from modeld.access import AccessPolicy, Caller, peer_credentials
from modeld.errors import ModeldError, PermissionDenied, SocketInUse, TooManyConnections
from modeld.events import Subscription
from modeld.jsonraw import RawJSON, response_bytes, response_line
from modeld.supervisor import Supervisor

log = structlog.get_logger("modeld.rpc")

MAX_MESSAGE_BYTES = 1024 * 1024
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600


@dataclass(frozen=True)
class Context:
    """What a handler gets: the Supervisor, who is calling, and what they may do."""

    supervisor: Supervisor
    caller: Caller
    policy: AccessPolicy
    # Connects a subscription to this connection, which then pushes its events.
    attach: Callable[[Subscription], None] = lambda _: None


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(_Params):
    """Methods that take no parameters."""


class ModelParams(_Params):
    """`stop`: a model name."""

    model: str = Field(min_length=1)


class LogsParams(ModelParams):
    """`logs`: a model, and how many of its last lines."""

    lines: int = Field(default=50, ge=1, le=10_000)


class LoadParams(ModelParams):
    """`switch`, `start`, `restart`: a model, whether to wait for health, and for how long."""

    wait: bool = True
    timeout: float | None = Field(default=None, gt=0)


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


def _query(params_type: type[P], call: Callable[[Context, P], Any]) -> Callable[..., Result]:
    """A read-only handler, answered synchronously from memory."""

    no_params = params_type.model_construct() if not params_type.model_fields else None

    def handler(context: Context, *args: Any, **kwargs: Any) -> Result:
        if no_params is not None and not args and not kwargs:
            return Success(call(context, no_params))  # nothing to validate
        params = _validated(params_type, args, kwargs)
        if not isinstance(params, params_type):
            return params
        return Success(call(context, params))

    # jsonrpcserver binds the params against the handler's signature on every call;
    # a ready-made signature spares inspect from rebuilding it each time.
    handler.__signature__ = HANDLER_SIGNATURE  # type: ignore[attr-defined]
    return handler


def _method(
    params_type: type[P], call: Callable[[Context, P], Any], mutates: bool = False
) -> Handler:
    """Validate params, check access, call the Supervisor, map ModeldError to its code."""

    async def handler(context: Context, *args: Any, **kwargs: Any) -> Result:
        params = _validated(params_type, args, kwargs)
        if not isinstance(params, params_type):
            return params
        try:
            if mutates and not context.policy.may_mutate(context.caller):
                raise PermissionDenied(
                    "permission denied: this uid may read but not change models "
                    "(daemon.allow_uids / allow_groups)",
                    uid=context.caller.uid,
                )
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
    return ctx.supervisor.status_json()


def _gpu(ctx: Context, _: NoParams) -> dict[str, Any]:
    return ctx.supervisor.gpu()


def _models(ctx: Context, _: NoParams) -> list[dict[str, Any]]:
    return ctx.supervisor.models()


async def _switch(ctx: Context, p: LoadParams) -> dict[str, Any]:
    return await ctx.supervisor.switch(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _start(ctx: Context, p: LoadParams) -> dict[str, Any]:
    return await ctx.supervisor.start(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _stop(ctx: Context, p: ModelParams) -> dict[str, Any]:
    return await ctx.supervisor.stop(p.model, caller=ctx.caller.as_log())


async def _restart(ctx: Context, p: LoadParams) -> dict[str, Any]:
    return await ctx.supervisor.restart(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _subscribe(ctx: Context, _: NoParams) -> dict[str, Any]:
    ctx.attach(ctx.supervisor.subscribe())
    return {"subscribed": True}


async def _logs(ctx: Context, p: LogsParams) -> dict[str, Any]:
    return await ctx.supervisor.logs(p.model, p.lines)


async def _reload(ctx: Context, _: NoParams) -> dict[str, Any]:
    return await ctx.supervisor.reload(caller=ctx.caller.as_log())


_QUERIES: dict[str, Callable[[Context, NoParams], Any]] = {
    "ping": _ping,
    "status": _status,
    "gpu": _gpu,
    "models": _models,
}
# Read-only methods answered from memory: dispatched synchronously, inline.
QUERY_METHODS = {name: _query(NoParams, call) for name, call in _QUERIES.items()}
METHODS: dict[str, Handler] = {
    **{name: _method(NoParams, call) for name, call in _QUERIES.items()},
    "switch": _method(LoadParams, _switch, mutates=True),
    "start": _method(LoadParams, _start, mutates=True),
    "stop": _method(ModelParams, _stop, mutates=True),
    "reload": _method(NoParams, _reload, mutates=True),
    "subscribe": _method(NoParams, _subscribe),
    "logs": _method(LogsParams, _logs),
    "restart": _method(LoadParams, _restart, mutates=True),
}


_UNPARSED = object()


def _dispatch_query(request: dict[str, Any], context: Context) -> bytes | None:
    """A read-only call's answer line. The hot path (`status` is polled thousands of
    times a second): jsonrpcserver's own request dispatch, without the layers around it
    that a single, already parsed request does not need. None (then the full dispatch
    answers) for a notification or a request that is not a valid JSON-RPC envelope."""
    if "id" not in request:
        return None
    try:
        validate_envelope(request)
    except ValidationError:
        return None
    call, result = dispatch_request(QUERY_METHODS, context, create_request(request))
    return response_bytes(to_response(call, result), b"\n")


def _parse(line: bytes) -> tuple[str | None, Any]:
    """The line as text and as JSON (_UNPARSED if it is not JSON; None text if not UTF-8)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, _UNPARSED
    try:
        return text, json.loads(text)
    except (ValueError, RecursionError):
        return text, _UNPARSED


def _error_line(code: int, message: str, data: dict[str, Any]) -> bytes:
    body = {"jsonrpc": "2.0", "error": {"code": code, "message": message, "data": data}, "id": None}
    return json.dumps(body).encode() + b"\n"


class RpcServer:
    """Serves JSON-RPC on a Unix socket; each connection, and each request, on its own."""

    def __init__(
        self,
        supervisor: Supervisor,
        path: Path,
        mode: int = 0o660,
        group: str | None = None,
        policy: AccessPolicy | None = None,
        max_connections: int = 256,
    ) -> None:
        self._supervisor = supervisor
        self._policy = policy or AccessPolicy()
        self._max_connections = max_connections
        self._connections = 0
        self._path = path
        self._mode = mode
        self._group = group
        self._server: asyncio.Server | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._listening = False

    async def start(self, inherited: socket.socket | None = None) -> None:
        """Listen on the socket systemd passed in, else on the socket path (replacing a
        stale socket but never a live one)."""
        if inherited is not None:
            # systemd owns this socket, its mode and its group: serve it, never remove it.
            self._server = await asyncio.start_unix_server(
                self._connection, sock=inherited, limit=MAX_MESSAGE_BYTES + 1
            )
            log.info("socket.listening", path=str(inherited.getsockname()), activated=True)
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists() or self._path.is_socket():
            if await _answers(self._path):
                raise SocketInUse(
                    f"{self._path} is in use by another process (is modeld running?)",
                    socket=str(self._path),
                )
            self._path.unlink()
        self._server = await asyncio.start_unix_server(
            self._connection, path=str(self._path), limit=MAX_MESSAGE_BYTES + 1
        )
        self._listening = True
        os.chmod(self._path, self._mode)
        if self._group:
            try:
                os.chown(self._path, -1, grp.getgrnam(self._group).gr_gid)
            except (KeyError, PermissionError) as exc:
                log.warning("socket.group_not_set", group=self._group, error=str(exc))
        log.info("socket.listening", path=str(self._path))

    @property
    def address(self) -> str:
        """Where clients connect: the socket systemd passed in, or the path."""
        sockets = self._server.sockets if self._server else ()
        return str(sockets[0].getsockname()) if sockets else str(self._path)

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to `grace_s`), remove the socket."""
        try:
            if self._server is not None:
                self._server.close()
                if self._requests:
                    await asyncio.wait(self._requests, timeout=grace_s)
        finally:
            # Only the socket this server created: never another daemon's.
            if self._listening:
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = peer_credentials(writer.get_extra_info("socket"))
        if self._connections >= self._max_connections:
            refusal = TooManyConnections(
                f"modeld serves at most {self._max_connections} connections; try again later",
                limit=self._max_connections,
            )
            log.warning("rpc.connection_refused", limit=self._max_connections, **caller.as_log())
            await self._send(writer, _error_line(refusal.code, refusal.message, refusal.data))
            writer.close()
            return
        self._connections += 1
        pumps: list[tuple[Subscription, asyncio.Task[None]]] = []

        def attach(subscription: Subscription) -> None:
            pump = asyncio.create_task(self._pump(subscription, writer))
            pumps.append((subscription, pump))

        context = Context(self._supervisor, caller, self._policy, attach)
        mine: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    line = exc.partial  # the last message may lack its newline
                    if not line.strip():
                        break
                except asyncio.LimitOverrunError:
                    await self._send(
                        writer,
                        _error_line(
                            INVALID_REQUEST,
                            "Invalid Request",
                            {"error": "too_large", "limit_bytes": MAX_MESSAGE_BYTES},
                        ),
                    )
                    break  # the stream cannot be resynchronised: drop this connection only
                if line.strip():
                    text, request = _parse(line)
                    if isinstance(request, dict) and request.get("method") in QUERY_METHODS:
                        # Answered from memory at once: no task, no extra loop turn.
                        await self._request(text, request, context, writer)
                        continue
                    # Anything that may take long runs on its own, so this connection's
                    # next requests are not held up behind it.
                    task = asyncio.create_task(self._request(text, request, context, writer))
                    for registry in (self._requests, mine):
                        registry.add(task)
                        task.add_done_callback(registry.discard)
                if reader.at_eof():
                    break
        except ConnectionError:
            pass
        finally:
            # A caller that hangs up (or half-closes after its last request, as socat does)
            # does not abort its switch: the request tasks finish, answer if they still can,
            # and log their outcome; only then is the transport closed.
            for subscription, pump in pumps:
                self._supervisor.unsubscribe(subscription)
                pump.cancel()
            if mine:
                await asyncio.wait(mine)
            self._connections -= 1
            writer.close()

    async def _pump(self, subscription: Subscription, writer: asyncio.StreamWriter) -> None:
        """Push a subscription's events to its connection as `event` notifications."""
        while not writer.is_closing():
            event = await subscription.next()
            message = {"jsonrpc": "2.0", "method": "event", "params": event}
            await self._send(writer, json.dumps(message).encode() + b"\n")

    async def _request(
        self,
        text: str | None,
        request: Any,
        context: Context,
        writer: asyncio.StreamWriter,
    ) -> None:
        if text is None:
            await self._send(writer, _error_line(-32700, "Parse error", {"error": "not_utf8"}))
            return
        query = isinstance(request, dict) and request.get("method") in QUERY_METHODS
        if query and (answer := _dispatch_query(request, context)) is not None:
            await self._send(writer, answer)
            return
        options: dict[str, Any] = {
            "context": context,
            # Parsed once already; what did not parse is left to jsonrpcserver to report.
            "deserializer": json.loads if request is _UNPARSED else lambda _: request,
            "validator": validate_envelope,
            # Each Response straight to bytes: no dict step, no str step.
            "post_process": response_bytes,
        }
        if query:
            dispatched = dispatch_to_response(text, QUERY_METHODS, **options)
        else:
            dispatched = await async_dispatch_to_response(text, METHODS, **options)
        line = response_line(dispatched)
        if line is not None:
            await self._send(writer, line)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write one whole message (one write call: messages from the connection's
        requests and its event pump never interleave), then wait while the caller's
        buffer is full."""
        if writer.is_closing():
            log.info("rpc.caller_gone", bytes=len(data))
            return
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            log.info("rpc.caller_gone", bytes=len(data))


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
