"""One connection to modeld's socket: calls from many tasks at once, pushed events and
log lines, leases; answers read into the wire types."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, NotRequired, TypedDict, TypeVar

from pydantic import BaseModel, ValidationError

from modeld.core.errors import WouldLoad
from modeld.core.queues import DropOldest
from modeld.wire.events import AnyEvent, read_event
from modeld.wire.results import LeaseResult, NotLoaded
from modeld.wire.status import GpuStatus, Status

T = TypeVar("T", bound=BaseModel)

DEFAULT_SOCKET = Path("/run/modeld/modeld.sock")


def default_socket() -> Path:
    """MODELD_SOCKET, else the packaged default."""
    return Path(os.environ.get("MODELD_SOCKET", str(DEFAULT_SOCKET)))


class RpcFailure(TypedDict):
    """A JSON-RPC error object, as the daemon sends it."""

    code: int
    message: str
    data: NotRequired[Any]


class Response(TypedDict, total=False):
    """One answer line to a call: a `result`, or an `error` (JSON-RPC 2.0)."""

    jsonrpc: str
    id: int | str | None
    result: Any
    error: RpcFailure


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class DaemonUnreachable(Exception):
    """Nothing answers on the socket."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot reach modeld at {path}: {reason}")
        self.path = path
        self.reason = reason


class UnreadableAnswer(Exception):
    """The daemon answered with something this client does not read (another version?)."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"modeld's answer to {method} is not one this client reads: {reason}")
        self.method = method


def read_answer(kind: type[T], method: str, answer: Any) -> T:
    """`answer` (to `method`) as its wire type; UnreadableAnswer if it is not one."""
    try:
        return kind.model_validate(answer)
    except ValidationError as exc:
        raise UnreadableAnswer(method, str(exc)) from None


class Client:
    """One connection. Calls may be made from many tasks at once: each waits for the
    answer with its id (one reader task matches answers to calls). Leases taken on it
    end when it closes."""

    EVENTS_KEPT = 10_000
    # Notifications are not written past this many bytes waiting to be sent: a daemon
    # that stops reading cannot make a notifier's memory grow.
    NOTIFY_BUFFER_BYTES = 1024 * 1024

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_socket()
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._events: DropOldest[dict[str, Any] | None] = DropOldest(self.EVENTS_KEPT)
        # Followed logs, per model: each line, then None at the end.
        self._logs: dict[str, DropOldest[str | None]] = {}
        self._closed: DaemonUnreachable | None = None
        self._background: set[asyncio.Future[Any]] = set()

    async def __aenter__(self) -> Client:
        try:
            reader, self._writer = await asyncio.open_unix_connection(
                str(self.path), limit=64 * 1024 * 1024
            )
        except FileNotFoundError:
            raise DaemonUnreachable(self.path, "no such socket") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(self.path, "connection refused (stale socket?)") from None
        except PermissionError:
            raise DaemonUnreachable(
                self.path, "permission denied (are you in the modeld group?)"
            ) from None
        self._reading = asyncio.create_task(self.read_answer(reader))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._writer is not None:
            self._writer.close()

    async def read_answer(self, reader: asyncio.StreamReader) -> None:
        """Match each answer to its call; queue pushed events."""
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message.get("method") == "event":
                    self._events.offer(message["params"])
                    continue
                if message.get("method") == "log":
                    params = message["params"]
                    queue = self._logs.get(params["model"])
                    if queue is not None:
                        if params.get("ended"):
                            queue.finish(None)
                        else:
                            queue.offer(params["line"])
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (ConnectionError, ValueError):
            pass
        finally:
            # Closed by the daemon, or by us (__aexit__ cancels this task): either way,
            # calls fail at once from now on and whoever waits is told.
            self._ended()

    def _ended(self) -> None:
        self._closed = DaemonUnreachable(self.path, "connection closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._closed)
        self._pending.clear()
        self._events.finish(None)  # the end, kept even when the queue is full
        for queue in self._logs.values():
            queue.finish(None)

    async def call(self, method: str, /, **params: object) -> Any:
        """Call `method` with named params; the result, or RpcError."""
        response = await self._ask(method, params)
        if "error" in response:
            raise _refusal(response)
        return response["result"]

    def notify(self, method: str, /, **params: object) -> bool:
        """Send `method` as a notification: no answer comes, none is waited for (a
        standing lease's counts). Written at once, in order with this connection's calls;
        False (not sent) when the connection is closed or NOTIFY_BUFFER_BYTES wait to be
        sent already (the daemon is not reading)."""
        assert self._writer is not None, "use `async with`"
        if self._closed is not None or self._writer.is_closing():
            return False
        if self._writer.transport.get_write_buffer_size() > self.NOTIFY_BUFFER_BYTES:
            return False
        message = {"jsonrpc": "2.0", "method": method, "params": params}
        self._writer.write(json.dumps(message).encode() + b"\n")
        return True

    async def _ask(self, method: str, params: dict[str, object]) -> Response:
        """Send one call; its whole answer (a `result` or an `error`)."""
        assert self._writer is not None, "use `async with`"
        if self._closed is not None:
            raise self._closed
        request_id = next(self._ids)
        message: dict[str, object] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params:
            message["params"] = params
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()
            return await answer
        finally:
            self._pending.pop(request_id, None)

    async def events(self) -> AsyncIterator[AnyEvent]:
        """Subscribe, then yield each event the daemon pushes on this connection."""
        async for event in await self.subscribe():
            yield event

    async def subscribe(self) -> AsyncIterator[AnyEvent]:
        """Subscribe now (events from this moment on are kept for the caller); iterate the
        result for each event the daemon pushes on this connection."""
        await self.call("subscribe")
        return self._pushed()

    async def _pushed(self) -> AsyncIterator[AnyEvent]:
        while (pushed := await self._events.get()) is not None:
            yield read_event(pushed)
        raise DaemonUnreachable(self.path, "connection closed by modeld")

    async def follow(self, model: str, lines: int = 50) -> AsyncIterator[str]:
        """`model`'s backend's last `lines` lines, then each new one as it is printed,
        until the backend ends (or the connection does)."""
        queue = self._logs.setdefault(model, DropOldest(self.EVENTS_KEPT))
        try:
            await self.call("logs", model=model, lines=lines, follow=True)
            while (line := await queue.get()) is not None:
                yield line
        finally:
            self._logs.pop(model, None)

    async def status(self) -> Status:
        """`status`: every model, the GPU, parking and runtimes."""
        return read_answer(Status, "status", await self.call("status"))

    async def gpu(self) -> GpuStatus:
        """`gpu`: the last GPU reading."""
        return read_answer(GpuStatus, "gpu", await self.call("gpu"))

    async def acquire(
        self,
        model: str,
        timeout_s: float | None = None,
        request_bytes: int | None = None,
        standing: bool = False,
    ) -> LeaseResult:
        """`acquire`: a lease on `model` once it runs, switching, waking or joining a load
        as needed (for a request of `request_bytes`, named if it kills its backend). A
        caller cancelled while it waits (a client that hung up) does not leak the lease:
        it is released once granted."""
        response = await self._acquire(model, timeout_s, True, request_bytes, standing)
        if "error" in response:
            raise _refusal(response)
        return await self._lease_read(response["result"])

    async def acquire_if_loaded(
        self,
        model: str,
        timeout_s: float | None = None,
        request_bytes: int | None = None,
        standing: bool = False,
    ) -> LeaseResult | NotLoaded:
        """`acquire` with `load: false`: a lease on `model` if that needs no load or wake
        of its own (joining one under way is fine), else NotLoaded, holding nothing. A
        router budgets the loads its callers cause with it."""
        response = await self._acquire(model, timeout_s, False, request_bytes, standing)
        if "error" not in response:
            return await self._lease_read(response["result"])
        error = response["error"]
        data = error.get("data")
        if error.get("code") != WouldLoad.code or not isinstance(data, dict):
            raise _refusal(response)
        try:
            return NotLoaded(model=data["model"], state=data["state"], message=error["message"])
        except (KeyError, ValidationError) as exc:
            raise UnreadableAnswer("acquire", f"would_load without {exc}") from None

    async def _acquire(
        self,
        model: str,
        timeout_s: float | None,
        load: bool,
        request_bytes: int | None,
        standing: bool,
    ) -> Response:
        params: dict[str, object] = {"model": model}
        if timeout_s is not None:
            params["timeout_s"] = timeout_s
        if not load:
            params["load"] = False
        if request_bytes is not None:
            params["request_bytes"] = request_bytes
        if standing:
            params["standing"] = True
        pending = asyncio.ensure_future(self._ask("acquire", params))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(self._release_granted)
            raise

    async def _lease_read(self, granted: Any) -> LeaseResult:
        try:
            return read_answer(LeaseResult, "acquire", granted)
        except UnreadableAnswer:
            # Not a lease this client reads: given back, so nothing stays held.
            if isinstance(granted, dict) and "lease" in granted:
                with contextlib.suppress(RpcError, DaemonUnreachable):
                    await self.call("release", lease=granted["lease"])
            raise

    def _release_granted(self, acquired: asyncio.Future[Response]) -> None:
        if acquired.cancelled() or acquired.exception() is not None or self.closed:
            return
        granted = acquired.result().get("result")
        if not isinstance(granted, dict) or "lease" not in granted:
            return  # refused: nothing is held
        release = asyncio.ensure_future(self.call("release", lease=granted["lease"]))
        self._background.add(release)
        release.add_done_callback(self._background.discard)
        release.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def wait_closed(self) -> None:
        """Return once the connection is closed (by the daemon, or by us)."""
        if self._reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._reading)

    @property
    def closed(self) -> bool:
        """Whether the daemon closed this connection (calls on it fail at once)."""
        return self._closed is not None

    @contextlib.asynccontextmanager
    async def lease(self, model: str, timeout_s: float | None = None) -> AsyncIterator[str]:
        """`async with client.lease("gpt-oss-20b") as endpoint:` send requests to
        `endpoint`; modeld keeps the model loaded (never evicts it) until the block ends."""
        granted = await self.acquire(model, timeout_s)
        try:
            yield granted.endpoint
        finally:
            with contextlib.suppress(DaemonUnreachable):  # then it ended with the connection
                await self.call("release", lease=granted.lease)


def _refusal(response: Response) -> RpcError:
    """An answer's `error`, as the exception a call raises."""
    error = response["error"]
    return RpcError(error["code"], error["message"], error.get("data"))


async def call(method: str, path: Path | None = None, /, **params: object) -> Any:
    """One call on a fresh connection."""
    async with Client(path) as client:
        return await client.call(method, **params)
