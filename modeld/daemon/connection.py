"""One client connection of the socket server: how answers are written to it, and what
it is sent without asking (its one event subscription, the logs it follows).

Everything written goes through `Connection.send`: one write per message (answers and
notifications never interleave), and a client that stops reading is cut off at the
write deadline rather than holding memory or anyone else up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog

from modeld.core.errors import LimitReached
from modeld.daemon.access import Caller
from modeld.engine.engine import Engine
from modeld.wire.events import Subscription, event_json

log = structlog.get_logger("modeld.daemon.server")

# How many models' logs one connection may follow at once.
MAX_FOLLOWS_PER_CONNECTION = 8


def notification(method: str, params: dict[str, Any]) -> bytes:
    """A JSON-RPC notification line."""
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode() + b"\n"


class Connection:
    """One client: its writer, its request tasks, what is pushed to it."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        caller: Caller,
        write_timeout_s: float,
        engine: Engine,
    ) -> None:
        self.writer = writer
        self.caller = caller
        self.write_timeout_s = write_timeout_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.acquires: set[asyncio.Task[None]] = set()
        self.pushes = Pushes(self, engine)
        self.closed = False
        self.gone_logged = False

    async def send(self, data: bytes) -> None:
        """Write one whole message (one write call: messages from the connection's
        requests and its pushes never interleave), then wait while the caller's buffer
        is full, up to the write deadline; a caller that does not read is cut."""
        if self.writer.is_closing():
            self._gone(len(data))
            return
        try:
            self.writer.write(data)
            transport = self.writer.transport
            if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
                return  # below the high-water mark: nothing to wait for (no timer, no task)
            await asyncio.wait_for(self.writer.drain(), self.write_timeout_s)
        except ConnectionError:
            self._gone(len(data))
        except TimeoutError:
            if not self.writer.is_closing():
                log.warning(
                    "rpc.client_not_reading",
                    timeout_s=self.write_timeout_s,
                    **self.caller.as_log(),
                )
            self.writer.transport.abort()

    def _gone(self, size: int) -> None:
        # Once per connection: a client that left must not make a log line per answer.
        if not self.gone_logged:
            self.gone_logged = True
            log.info("rpc.caller_gone", bytes=size, **self.caller.as_log())


class Pushes:
    """What a connection is sent without asking: `event` notifications from its one
    subscription, `log` notifications for each model it follows. All end with it."""

    def __init__(self, connection: Connection, engine: Engine) -> None:
        self._connection = connection
        self._engine = engine
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._follows: dict[str, asyncio.Task[None]] = {}

    def subscribe(self) -> bool:
        """Give the connection its one subscription; False if it had one already."""
        if self._subscription is not None:
            return False
        self._subscription = self._engine.events.subscribe()
        if self._connection.closed:
            # The caller hung up before its subscribe was served: nothing to push to.
            self.end()
        else:
            self._pump = asyncio.create_task(self._events(self._subscription))
        return True

    def follow(self, model: str, lines: AsyncIterator[str]) -> bool:
        """Push `lines` as `log` notifications; False if it follows `model` already. The
        follow ends with the backend or the connection."""
        if model in self._follows or self._connection.closed:
            return False
        if len(self._follows) >= MAX_FOLLOWS_PER_CONNECTION:
            raise LimitReached(
                f"this connection follows {len(self._follows)} models' logs already",
                limit=MAX_FOLLOWS_PER_CONNECTION,
            )
        task = asyncio.create_task(self._logs(model, lines))
        self._follows[model] = task
        task.add_done_callback(lambda _: self._follows.pop(model, None))
        return True

    def end(self) -> None:
        """The connection is closing: stop every push (a no-op when there is none)."""
        if self._subscription is not None:
            self._engine.events.unsubscribe(self._subscription)
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        for task in self._follows.values():
            task.cancel()

    async def _events(self, subscription: Subscription) -> None:
        connection = self._connection
        while not connection.writer.is_closing():
            event = await subscription.next()
            await connection.send(notification("event", event_json(event)))

    async def _logs(self, model: str, lines: AsyncIterator[str]) -> None:
        # The write deadline cuts off a caller that does not read; the runtime drops
        # lines for it meanwhile, never holds the backend up.
        connection = self._connection
        async for line in lines:
            if connection.writer.is_closing():
                return
            await connection.send(notification("log", {"model": model, "line": line}))
        await connection.send(notification("log", {"model": model, "ended": True}))
