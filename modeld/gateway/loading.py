"""Honest loading in streams. A streamed request whose model must first load (or wake,
or wait its turn) gets its headers at once and an SSE comment at least every
COMMENT_EVERY_S (`: modeld loading chat 40% ~12 s left`, from the daemon's learned
estimate), then the answer; comments are invisible to SSE clients, but proxies and
clients that give up on silence see bytes. A load that fails after the headers went out
is sent as an OpenAI-style error event, which the `openai` package raises.

Chat clients that show nothing of comments may ask for the progress as text instead
(header `X-Modeld-Progress: reasoning`, chat completions only, off by default): each
tick is then a chat.completion.chunk whose delta carries it in `reasoning_content`, as
llama-swap's loading state does, which chat UIs show as the model's thinking."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import structlog
from aiohttp import web

from modeld.gateway.auth import identity
from modeld.gateway.errors import GatewayError, for_caller, openai_body
from modeld.gateway.link import DaemonLink

log = structlog.get_logger("modeld.gateway.loading")

# Well under the 30-60 s idle timeouts of common proxies and clients.
COMMENT_EVERY_S = 2.0
# The request header, and its one value, that asks for the progress as reasoning text.
PROGRESS_HEADER = "X-Modeld-Progress"
AS_REASONING = "reasoning"


class Feedback:
    """The early response of one streamed request that waits for its model."""

    def __init__(
        self, request: web.Request, model: str, link: DaemonLink, asked: str | None = None
    ) -> None:
        self._request = request
        self._model = model
        self._link = link
        # The name the caller used, for the progress chunks' `model` field.
        self._asked = asked or model
        self._as_reasoning = (
            request.path == "/v1/chat/completions"
            and request.headers.get(PROGRESS_HEADER, "").strip().lower() == AS_REASONING
        )
        self._started_at = int(time.time())
        self.response: web.StreamResponse | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.gone = False

    async def start(self) -> None:
        """Send the headers now, then a comment at once and every COMMENT_EVERY_S."""
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(self._request)
        self.response = response
        self._ticker = asyncio.create_task(self._tick(response))

    async def stop(self) -> None:
        """No more comments (the lease came, or the wait failed)."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None

    async def fail(self, error: GatewayError) -> web.StreamResponse:
        """The wait failed after the headers went out: an error event, then the end."""
        assert self.response is not None
        caller = identity(self._request)
        shown = for_caller(error, admin=caller is not None and caller.admin)
        event = f"data: {json.dumps(openai_body(shown))}\n\n".encode()
        try:
            await self.response.write(event)
            await self.response.write_eof()
        except ConnectionResetError:
            self.gone = True
        return self.response

    async def _tick(self, response: web.StreamResponse) -> None:
        try:
            estimate = await self._estimate()
            started = time.monotonic()
            while True:
                text = self._progress(estimate, started)
                await response.write(
                    self._chunk(text) if self._as_reasoning else self._comment(text)
                )
                await asyncio.sleep(COMMENT_EVERY_S)
        except ConnectionResetError:
            self.gone = True

    async def _estimate(self) -> tuple[float | None, float]:
        """The expected load (or wake) seconds, and how far along it already is."""
        try:
            models = (await self._link.status()).models
        except GatewayError:
            return None, 0.0
        view = models.get(self._model)
        if view is None:
            return None, 0.0
        after = 0.0
        base = models.get(view.base) if view.base is not None else None
        if base is not None and base.status != "running":
            # An adapter waits for its base: the base's load, then its own.
            view, after = base, view.estimated_load_time_seconds
        seconds = view.estimated_load_time_seconds
        if view.status == "sleeping" and view.parked is not None:
            seconds = view.parked.estimated_wake_seconds
        elapsed = 0.0
        if view.status == "loading":
            since = datetime.fromisoformat(view.since).timestamp()
            elapsed = max(0.0, time.time() - since)
        return seconds + after, elapsed

    def _progress(self, estimate: tuple[float | None, float], started: float) -> str:
        """`loading MODEL 40% ~12 s left`, from the estimate and the time gone by."""
        expected, before = estimate
        elapsed = before + time.monotonic() - started
        text = f"loading {self._model}"
        if expected:
            done = min(0.99, elapsed / expected)
            left = max(0.0, expected - elapsed)
            text += f" {done:.0%} ~{left:.0f} s left"
        return text

    @staticmethod
    def _comment(text: str) -> bytes:
        """An SSE comment: bytes on the wire that no SSE client shows."""
        return f": modeld {text}\n\n".encode()

    def _chunk(self, text: str) -> bytes:
        """A chat.completion.chunk whose delta carries the progress as reasoning text."""
        chunk = {
            "id": f"modeld-loading-{self._started_at}",
            "object": "chat.completion.chunk",
            "created": self._started_at,
            "model": self._asked,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "reasoning_content": f"modeld: {text}\n"},
                    "finish_reason": None,
                }
            ],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()
