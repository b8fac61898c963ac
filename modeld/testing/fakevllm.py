"""A fake vLLM server for the demo and the tests: it speaks vLLM's HTTP protocol.

Like vLLM it keeps its port closed while it "loads", then answers `/health` with
200 and an empty body, `/v1/models` with the served model, and `/version`.
It can also fail the ways vLLM fails: exit during load, die later (`/health` 503, then
exit 0, as vLLM's API server does when its engine process dies), or hang (`/health`
still 200, no request ever answered).

With `--enable-sleep-mode` and VLLM_SERVER_DEV_MODE=1 it serves vLLM's sleep
endpoints: `POST /sleep?level=1`, `POST /wake_up` (each taking its time, as moving
weights between GPU and host RAM does), `GET /is_sleeping`; while asleep `/health`
still answers 200 and completions wait (queued) until it is woken, as in vLLM 0.32.
With `loras` (fakevllm_lora.py) it loads and unloads LoRA adapters at run time, and
answers requests that name one as that adapter.
`/metrics` serves the request counters and gauges vLLM exports (running, waiting,
finished, `vllm:kv_cache_usage_perc` and `vllm:engine_sleep_state`), counting the
completions it answered; each request running holds a share of the KV cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modeld.testing.fakevllm_faults import Faults
from modeld.testing.fakevllm_lora import FakeLoras, json_body, vllm_error
from modeld.testing.fakevllm_metrics import FakeVllmMetrics

# Like uvicorn's access lines under vLLM: client, request line, status.
ACCESS_LOG_FORMAT = '%a - "%r" %s'
POLLED = ("GET /health ", "GET /metrics ", "GET /is_sleeping ")
# Longest answer it gives (tens of MB streamed: enough to fill any socket buffer).
MAX_TOKENS = 262_144
# The paths vLLM's --api-key guards (its security guide: nothing else is).
KEYED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


class FakeVllm:
    """One fake vLLM server; runs in-process (tests) or as a process (`modeld-fake-vllm`)."""

    def __init__(
        self,
        model: str,
        port: int,
        host: str = "127.0.0.1",
        load_seconds: float = 0.0,
        *,
        sleep_mode: bool = False,
        dev_mode: bool = False,
        sleep_seconds: float = 0.0,
        wake_seconds: float = 0.0,
        wake_fails: bool = False,
        request_seconds: float = 0.0,
        token_seconds: float = 0.0,
        api_key: str | None = None,
        access_log: logging.Logger | None = None,
        uds: str | None = None,
        loras: FakeLoras | None = None,
    ) -> None:
        self.model = model
        # Like vLLM with --enable-lora and runtime updating: adapters loaded at run time.
        self.loras = loras
        # Like vLLM's --uds: listen on this Unix socket instead of host:port.
        self.uds = uds
        # The query string of the last inference request, as it arrived.
        self.last_query = ""
        # Like vLLM's --api-key (or VLLM_API_KEY): asked for under /v1 only.
        self.api_key = api_key
        # As a process it prints a line per request, as vLLM's API server does.
        self.access_log = access_log
        self.port = port
        self.host = host
        self.load_seconds = load_seconds
        self.engine_dead = False
        # Set: its engine hangs while its API server lives, as vLLM's sometimes does:
        # /health answers 200, an inference request is never answered.
        self.engine_hung = False
        self.sleep_mode = sleep_mode
        self.dev_mode = dev_mode
        self.sleep_seconds = sleep_seconds
        self.wake_seconds = wake_seconds
        self.wake_fails = wake_fails
        self.request_seconds = request_seconds
        self.token_seconds = token_seconds
        # Set: a streamed answer breaks off after this many tokens, its connection
        # dropped, as when vLLM's engine dies mid-answer.
        self.cut_after_tokens: int | None = None
        self.faults = Faults()
        # Set: after this many tokens of a streamed answer its engine hangs (the stream
        # waits forever, running; /health still 200; nothing new is answered).
        self.hang_after_tokens: int | None = None
        # Set while awake: completions sent while asleep wait for it.
        self._awake = asyncio.Event()
        self._awake.set()
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())
        self._exported = FakeVllmMetrics(model)

    @property
    def sleeping(self) -> bool:
        """Whether it is parked (weights in host RAM)."""
        return not self._awake.is_set()

    def _show_sleep_state(self) -> None:
        self._exported.show_sleep_state(self.sleeping)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.path.startswith(KEYED_PREFIXES)
            and request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate] if self.api_key else [])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/embeddings", self._embed)
        if self.loras is not None:
            self.loras.add_routes(app)
        # Like vLLM: the sleep endpoints exist only in dev mode.
        if self.dev_mode:
            app.router.add_post("/sleep", self._sleep)
            app.router.add_post("/wake_up", self._wake_up)
            app.router.add_get("/is_sleeping", self._is_sleeping)
        return app

    async def _sleep(self, request: web.Request) -> web.Response:
        if not self.sleep_mode:
            # vLLM's engine refuses: it was not started with --enable-sleep-mode.
            return web.json_response({"error": "Sleep mode is not enabled"}, status=500)
        if request.query.get("level", "1") not in ("1", "2"):
            return web.json_response({"error": "level must be 1 or 2"}, status=400)
        level = int(request.query.get("level", "1"))
        if not self.sleeping:
            await asyncio.sleep(self.sleep_seconds)
            self._awake.clear()
            self._show_sleep_state()
        return web.json_response({"status": "sleeping", "level": level})

    async def _wake_up(self, request: web.Request) -> web.Response:
        if not self.sleep_mode:
            return web.json_response({"error": "Sleep mode is not enabled"}, status=500)
        if self.sleeping:
            await asyncio.sleep(self.wake_seconds)
            if self.wake_fails:
                return web.json_response(
                    {"error": "CUDA error: out of memory while restoring weights"}, status=500
                )
            self._awake.set()
            self._show_sleep_state()
            self.faults.woke()
        return web.json_response({"status": "awake"})

    async def _is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._exported.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        """`/v1/completions` and `/v1/chat/completions`, streamed or not, as vLLM answers."""
        body = await self._admit(request)
        if isinstance(body, web.Response):
            return body
        if self.faults.kills(request, body):
            return web.Response(status=500)  # (never sent: the connection is dropped)
        chat = request.path.endswith("/chat/completions")
        tokens = self._tokens(body)
        with self._exported.running():
            if body.get("stream"):
                return await self._stream(request, body, chat, tokens)
            await asyncio.sleep(self.request_seconds + self.token_seconds * len(tokens))
        self._exported.finished.inc()
        self._exported.generated.inc(len(tokens))
        text = "".join(tokens)
        choice: dict[str, object] = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if chat
            else {"index": 0, "text": text}
        )
        return web.json_response(
            {
                "id": _request_id(chat),
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self._served(body),
                "choices": [{**choice, "logprobs": None, "finish_reason": "stop"}],
                "usage": _usage(tokens),
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, object], chat: bool, tokens: list[str]
    ) -> web.StreamResponse:
        """Server-sent events, one chunk per token, then `data: [DONE]` (vLLM's framing)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        request_id, created = _request_id(chat), int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        served = self._served(body)

        async def send(delta: str | None, finish: str | None, first: bool = False) -> None:
            if chat:
                content: dict[str, object] = {"content": delta} if delta is not None else {}
                if first:
                    content = {"role": "assistant", "content": ""}
                choice: dict[str, object] = {"index": 0, "delta": content}
            else:
                choice = {"index": 0, "text": delta or ""}
            chunk = {
                "id": request_id,
                "object": kind,
                "created": created,
                "model": served,
                "choices": [{**choice, "logprobs": None, "finish_reason": finish}],
            }
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await asyncio.sleep(self.request_seconds)
        if chat:
            await send(None, None, first=True)
        for sent, token in enumerate(tokens):
            if sent == self.cut_after_tokens and request.transport is not None:
                request.transport.abort()
                return response
            if sent == self.hang_after_tokens:
                self.engine_hung = True
                await asyncio.Event().wait()
            await send(token, None)
            self._exported.generated.inc()
            if self.token_seconds:
                await asyncio.sleep(self.token_seconds)
        await send("" if not chat else None, "stop")
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            usage = {"id": request_id, "object": kind, "created": created, "model": served}
            usage_chunk = {**usage, "choices": [], "usage": _usage(tokens)}
            await response.write(b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self._exported.finished.inc()
        return response

    async def _embed(self, request: web.Request) -> web.Response:
        """`/v1/embeddings`: one small vector per input."""
        body = await self._admit(request)
        if isinstance(body, web.Response):
            return body
        given = body.get("input", "")
        inputs = given if isinstance(given, list) else [given]
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(text))}
            for i, text in enumerate(inputs)
        ]
        words = sum(len(str(text).split()) for text in inputs)
        return web.json_response(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": self.model,
                "data": data,
                "usage": {"prompt_tokens": words, "total_tokens": words},
            }
        )

    async def _admit(self, request: web.Request) -> dict[str, object] | web.Response:
        """An inference request's body, once the model may answer it (awake); or the
        error vLLM gives for a bad body or another model's name."""
        self.last_query = request.rel_url.raw_query_string
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        if (refused := self._wrong_model(body)) is not None:
            return refused
        if self.engine_hung:
            # Queued, never answered (its client's deadline ends it), as a hung engine's
            # requests are: counted as waiting.
            self._exported.waiting.inc()
            try:
                await asyncio.Event().wait()
            finally:
                self._exported.waiting.dec()
        # Like vLLM: a request sent while asleep waits (queued) until the wake-up.
        if self.sleeping:
            self._exported.waiting.inc()
            try:
                await self._awake.wait()
            finally:
                self._exported.waiting.dec()
        return body

    def _wrong_model(self, body: dict[str, object]) -> web.Response | None:
        """vLLM answers 404 for a model it does not serve (none named: its own)."""
        named = body.get("model")
        if named is None or named == self.model or self._adapter(named):
            return None
        return vllm_error(404, "NotFoundError", f"The model `{named}` does not exist.")

    def _adapter(self, named: object) -> bool:
        return isinstance(named, str) and self.loras is not None and self.loras.serves(named)

    def _served(self, body: dict[str, object]) -> str:
        """Who answers: the adapter the request names, else the base."""
        named = body.get("model")
        return named if isinstance(named, str) and self._adapter(named) else self.model

    def _tokens(self, body: dict[str, object]) -> list[str]:
        """The answer, a token per word: the name of who answers (the model, or the
        adapter asked for), then `ok`s up to max_tokens."""
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 8
        count = max(1, min(int(limit) if isinstance(limit, int) else 8, MAX_TOKENS))
        return [self.faults.first_token(self._served(body)), *[" ok"] * (count - 1)]

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.engine_dead else 200)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self._created,
                        "owned_by": "vllm",
                        "root": self.model,
                    },
                    *(self.loras.cards(self._created) if self.loras is not None else []),
                ],
            }
        )

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0+fake"})

    async def load(self) -> None:
        """Spend the "load" time with the port closed, then open it."""
        await asyncio.sleep(self.load_seconds)
        # vLLM aborts a request whose client went away (its KV blocks freed at once);
        # aiohttp cancels the handler only when asked.
        self._runner = web.AppRunner(
            self._app(),
            access_log=self.access_log,
            access_log_format=ACCESS_LOG_FORMAT,
            handler_cancellation=True,
        )
        await self._runner.setup()
        site: web.BaseSite
        if self.uds is not None:
            # As vLLM does (create_server_unix_socket): bound as is, an old socket file
            # at the path not removed first, so a stale one fails the start.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.uds)
            site = web.SockSite(self._runner, sock)
        else:
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def close(self) -> None:
        """Close the port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _request_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def _usage(tokens: list[str]) -> dict[str, int]:
    return {"prompt_tokens": 1, "completion_tokens": len(tokens), "total_tokens": len(tokens) + 1}


def _vector(text: str) -> list[float]:
    """A deterministic unit-ish vector for `text` (same text, same embedding)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255 - 0.5, 4) for byte in digest[:16]]
