"""`GET /events`: modeld's events as server-sent events.

Each stream has its own bounded queue (modeld.wire.events): a slow reader loses its oldest
events (the next says `dropped_before`), never holds anyone up, and is cut off when it
does not read for WRITE_TIMEOUT_S. A comment line every KEEPALIVE_S keeps proxies from
closing an idle stream and finds clients that left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from modeld.gateway.auth import ANONYMOUS, identity
from modeld.gateway.errors import GatewayError
from modeld.gateway.metrics import GatewayMetrics
from modeld.wire.events import EventBus, Subscription, event_json

KEEPALIVE_S = 15.0
WRITE_TIMEOUT_S = 30.0
# What ends a stream whose source ended (a followed backend that stopped).
END = "event: end\ndata: {}\n\n"


class EventStreams:
    """Serves /events from the gateway's relay of the daemon's events."""

    def __init__(self, bus: EventBus, metrics: GatewayMetrics, limit: int, per_client: int) -> None:
        self._bus = bus
        self._metrics = metrics
        self._limit = limit
        self._per_client = per_client
        self._open = 0
        # Streams open per client: its key's name, or its address on a keyless gateway.
        self._clients: Counter[str] = Counter()
        self.closing = asyncio.Event()

    @contextlib.contextmanager
    def slot(self, request: web.Request) -> Iterator[None]:
        """One stream's place (an events stream or a followed log): refused with 429 past
        max_event_streams, or past max_event_streams_per_client for this client."""
        if self._open >= self._limit:
            raise GatewayError(
                "too_many_requests",
                f"{self._open} event streams are open (max_event_streams)",
                limit=self._limit,
            )
        caller = identity(request)
        client = (
            f"key:{caller.name}"
            if caller is not None and caller is not ANONYMOUS
            else f"address:{request.remote}"
        )
        if self._clients[client] >= self._per_client:
            raise GatewayError(
                "too_many_requests",
                f"this client has {self._per_client} event streams open "
                "(max_event_streams_per_client)",
                limit=self._per_client,
            )
        self._open += 1
        self._clients[client] += 1
        self._metrics.event_streams.inc()
        try:
            yield
        finally:
            self._open -= 1
            self._clients[client] -= 1
            if not self._clients[client]:
                del self._clients[client]
            self._metrics.event_streams.dec()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Stream events until the client leaves or the gateway stops."""
        with self.slot(request):
            subscription = self._bus.subscribe()
            try:
                return await self.relay(
                    request, lambda: _as_json(subscription), b": modeld events\n\n"
                )
            finally:
                self._bus.unsubscribe(subscription)

    async def relay(
        self,
        request: web.Request,
        source: Callable[[], Awaitable[str | None]],
        greeting: bytes,
    ) -> web.StreamResponse:
        """Send what `source` gives (JSON text), one `data:` message each, with a comment
        every KEEPALIVE_S while it gives nothing, until it gives None (then an `end`
        event), the client leaves or stops reading, or the gateway stops."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        closing = asyncio.ensure_future(self.closing.wait())
        pending: asyncio.Future[str | None] | None = None
        try:
            await response.prepare(request)
            await response.write(greeting)
            while not self.closing.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(source())
                waits: set[asyncio.Future[Any]] = {pending, closing}
                done, _ = await asyncio.wait(
                    waits, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if pending in done:
                    item, pending = pending.result(), None
                    # One `message` per item (an event's `type` is in its data), so a
                    # browser's EventSource.onmessage sees them all.
                    line = f"data: {item}\n\n" if item is not None else END
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await response.write(line.encode())
                    if item is None:
                        break
                elif closing not in done:
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await response.write(b": keepalive\n\n")
        except (ConnectionResetError, TimeoutError):
            pass  # the client left, or stopped reading
        finally:
            closing.cancel()
            if pending is not None:
                pending.cancel()
        return response


async def _as_json(subscription: Subscription) -> str:
    return json.dumps(event_json(await subscription.next()))
