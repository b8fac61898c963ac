"""Watching an answer as it streams to its caller: a caller that stops reading is cut
off, and one that hung up ends the request."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

log = structlog.get_logger("modeld.gateway.proxy")


class SlowReader:
    """Cuts off a caller that stops taking its answer: the same write still waiting for
    the client at two checks client_write_timeout_s apart aborts the connection (the
    write then fails as if the caller had hung up). One timer per answer rather than a
    deadline per piece, which would cost every streamed token a timer of its own."""

    def __init__(self, request: web.Request, timeout_s: float) -> None:
        self._writing = 0  # the write in progress (its number), or 0
        self._writes = 0
        self._seen = 0
        self._request = request
        self._timeout_s = timeout_s
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._check)

    @property
    def writing(self) -> bool:
        """Whether a write to the caller is in progress."""
        return bool(self._writing)

    @writing.setter
    def writing(self, value: bool) -> None:
        if value:
            self._writes += 1
        self._writing = self._writes if value else 0

    def _check(self) -> None:
        if self._writing and self._writing == self._seen and self._request.transport:
            log.warning(
                "gateway.client_too_slow", path=self._request.path, peer=self._request.remote
            )
            self._request.transport.abort()
            return
        # Stuck if the write in progress now is still in progress at the next check.
        self._seen = self._writing
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._check)

    def close(self) -> None:
        """The answer is over."""
        self._timer.cancel()


class ClientGone(Exception):
    """The client hung up before its answer ended."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("client gone")
        self.response = response
