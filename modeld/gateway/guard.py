"""Deadlines and a cap on the gateway's connections, which aiohttp does not set.

aiohttp puts no deadline on reading a request's headers: a client that trickles header
bytes (slowloris), or connects and sends nothing, holds its connection for ever, and
enough of them use up the gateway's file descriptors. Here every connection is either
serving a request (whose body, wait, upstream and writes have deadlines of their own)
or under a timer:

- from its opening, and from the first byte after an answer, the next request must
  reach its handler within `header_timeout_s`;
- once an answer is done, a connection that stays silent is closed after
  `keepalive_timeout_s`;
- past `max_connections` open at once, a new connection is answered 503 and closed as
  soon as it opens.

The guard wraps aiohttp's protocol factory (web.Server, documented as one for
create_server) with a protocol that passes every call through; a middleware tells it
when a request reaches its handler and when the answer is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from modeld.core.gateway_config import GatewayConfig
from modeld.gateway.metrics import GatewayMetrics

log = structlog.get_logger("modeld.gateway.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The whole answer to a connection past max_connections.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, a timer around it."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        if isinstance(inner, asyncio.BufferedProtocol):
            # Only data_received is passed through: say so at once, not with lost bytes.
            raise TypeError("aiohttp's protocol reads by buffers now: the guard must too")
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_headers = False
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._guard.admit(transport, self):
            # Said in HTTP before closing, so an OpenAI client backs off and retries
            # instead of seeing a bare reset; aiohttp is never involved.
            transport.write(REFUSAL)
            transport.close()
            return
        self._expect_headers()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self._waiting_headers:
            self._expect_headers()  # the first byte of the next request
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._transport is not None and self._guard.release(self._transport):
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        """A request reached its handler: its own deadlines take over."""
        self.busy = True
        self._cancel()

    def request_done(self) -> None:
        """Its answer is done: the connection may idle, then must send the next request."""
        self.busy = False
        self._arm(self._guard.keepalive_timeout_s, "idle")

    def _expect_headers(self) -> None:
        self._arm(self._guard.header_timeout_s, "headers")
        self._waiting_headers = True

    def _arm(self, seconds: float, reason: str) -> None:
        self._cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._expire, reason)

    def _cancel(self) -> None:
        self._waiting_headers = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str) -> None:
        self._timer = None
        if self._transport is not None and not self.busy:
            if reason == "headers":
                self._guard.metrics.header_timeouts.inc()
                peer = self._transport.get_extra_info("peername")
                log.info("gateway.header_timeout", peer=str(peer))
            self._transport.abort()


class ConnectionGuard:
    """The gateway's open connections, their deadlines and their cap."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.header_timeout_s = config.header_timeout_s
        self.keepalive_timeout_s = config.keepalive_timeout_s
        self.max_connections = config.max_connections
        self.metrics = metrics
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for create_server: `inner`'s protocols, guarded."""
        return lambda: _Guarded(inner(), self)

    def admit(self, transport: asyncio.BaseTransport, connection: _Guarded) -> bool:
        """Count a new connection in, or refuse it (False) past max_connections."""
        if len(self._open) >= self.max_connections:
            self.metrics.connections_refused.inc()
            log.warning("gateway.connection_refused", limit=self.max_connections)
            return False
        self._open[transport] = connection
        self.metrics.connections.set(len(self._open))
        return True

    def release(self, transport: asyncio.BaseTransport) -> bool:
        """Count a closed connection out; False for one that was never admitted."""
        admitted = self._open.pop(transport, None) is not None
        self.metrics.connections.set(len(self._open))
        return admitted

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Stops the connection's header timer while its request is served."""
        connection = self._open.get(request.transport) if request.transport else None
        if connection is not None:
            connection.request_started()
        try:
            return await handler(request)
        finally:
            if connection is not None:
                connection.request_done()
