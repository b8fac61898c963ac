"""Inference requests: a lease on the body's model, the request forwarded to its
backend, the answer streamed back chunk by chunk, the lease released at the end.

Only the allowlisted inference paths are forwarded (vLLM's admin endpoints, reachable
on a dev-mode backend, never are); only a few request headers go upstream (never the
caller's Authorization: the gateway's key is not the backend's, which the gateway sends
itself when the model has an `api_key_file`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from modeld.config import GatewayConfig
from modeld.gateway.auth import BackendKeys
from modeld.gateway.errors import GatewayError
from modeld.gateway.link import DaemonLink, Lease
from modeld.gateway.metrics import GatewayMetrics

log = structlog.get_logger("modeld.gateway.proxy")

# The inference paths vLLM's OpenAI-compatible server answers with a JSON body naming
# the model. Nothing else is forwarded: not /sleep, /wake_up, /is_sleeping,
# /collective_rpc, /reset_prefix_cache, /start_profile, /stop_profile, /metrics, ...
INFERENCE_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/score",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/score",
    "/pooling",
    "/classify",
    "/tokenize",
    "/detokenize",
)
# Request headers passed to the backend; the answer's headers that come back.
FORWARDED = ("Content-Type", "Accept", "Accept-Encoding", "X-Request-Id", "User-Agent")
RETURNED = ("Content-Type", "Content-Encoding", "X-Request-Id")


# Bodies up to this size are parsed on the event loop (well under a millisecond).
PARSE_INLINE_BYTES = 256 * 1024


def _encoded(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


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


def requested_model(body: bytes) -> tuple[str, dict[str, Any]]:
    """The model a request body names, and the body parsed; `bad_request` otherwise."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise GatewayError("bad_request", "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise GatewayError("bad_request", "the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError("bad_request", "the request body must name its `model` (a string)")
    return model, payload


class Proxy:
    """Forwards inference requests under leases, over one HTTP client session."""

    def __init__(
        self,
        link: DaemonLink,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        backend_keys: BackendKeys,
    ) -> None:
        self._link = link
        self._config = config
        self._metrics = metrics
        self._backend_keys = backend_keys
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0

    async def start(self) -> None:
        """Open the session to the backends."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._config.max_requests),
            # Bytes pass through as the backend sent them (compressed or not).
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._config.upstream_connect_timeout_s,
                sock_read=self._config.upstream_read_timeout_s,
            ),
        )

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One inference request, from lease to the answer's end."""
        if self._in_flight >= self._config.max_requests:
            raise GatewayError(
                "too_many_requests",
                f"the gateway has {self._in_flight} requests in flight (max_requests)",
                limit=self._config.max_requests,
            )
        self._in_flight += 1
        self._metrics.in_flight.inc()
        model, status, started = "", 500, time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._config.body_timeout_s):
                    body = await request.read()
            except TimeoutError:
                raise GatewayError(
                    "request_timeout",
                    f"the request body did not arrive within {self._config.body_timeout_s:g}s",
                ) from None
            if len(body) > PARSE_INLINE_BYTES:
                # A big body (a batch of embeddings) would stall every other request
                # while it is parsed: off the event loop.
                model, payload = await asyncio.to_thread(requested_model, body)
            else:
                model, payload = requested_model(body)
            response = await self._leased(request, model, payload, body)
            status = response.status
            return response
        except GatewayError as exc:
            status = exc.status
            raise
        except ClientGone as gone:
            status = 499  # the client went away (nginx's name for it)
            self._metrics.hangups.inc()
            return gone.response
        except asyncio.CancelledError:
            status = 499
            self._metrics.hangups.inc()
            raise
        finally:
            self._in_flight -= 1
            self._metrics.in_flight.dec()
            if model:
                self._metrics.requests.labels(model, request.path, str(status)).inc()
            # The access log (never the body, never the key).
            log.info(
                "gateway.request",
                model=model or None,
                path=request.path,
                status=status,
                seconds=round(time.monotonic() - started, 4),
                peer=request.remote,
            )

    async def _leased(
        self, request: web.Request, model: str, payload: dict[str, Any], body: bytes
    ) -> web.StreamResponse:
        started = time.monotonic()
        async with self._link.lease(model, self._config.acquire_timeout_s) as lease:
            self._metrics.load_wait.labels(model).observe(time.monotonic() - started)
            served = lease.granted.get("served_model_name", model)
            if served != model:
                renamed = {**payload, "model": served}
                body = (
                    await asyncio.to_thread(_encoded, renamed)
                    if len(body) > PARSE_INLINE_BYTES
                    else _encoded(renamed)
                )
            return await self._forward(request, lease, model, body)

    async def _forward(
        self, request: web.Request, lease: Lease, model: str, body: bytes
    ) -> web.StreamResponse:
        """Send the request to the backend; stream its answer back as it comes (the
        lease ends right after, with the block that holds it: a release before the last
        byte would cost every answer a round trip to the daemon)."""
        assert self._session is not None, "start() first"
        endpoint = str(lease.granted["endpoint"])
        headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
        headers.update(self._backend_keys.header(model))
        url = endpoint.rstrip("/") + request.path_qs
        response: web.StreamResponse | None = None
        try:
            async with self._session.post(url, data=body, headers=headers) as upstream:
                if upstream.status == 401:
                    # The caller's key was accepted; the backend refused the gateway's.
                    raise GatewayError(
                        "upstream_unauthorized",
                        f"{model}: its backend at {endpoint} refused the gateway's key: "
                        f"its api_key_file must hold the key the backend was started with",
                        model=model,
                    )
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name in RETURNED:
                    if name in upstream.headers:
                        response.headers[name] = upstream.headers[name]
                streamed = upstream.content_type == "text/event-stream"
                if upstream.content_length is not None and not streamed:
                    response.content_length = upstream.content_length
                watch = SlowReader(request, self._config.client_write_timeout_s)
                try:
                    await response.prepare(request)
                    # Each piece as it arrives: a streamed answer's events flushed one by one.
                    async for chunk in upstream.content.iter_any():
                        watch.writing = True
                        await response.write(chunk)
                        watch.writing = False
                    await response.write_eof()
                except ConnectionResetError:
                    # Leaving the block closes the upstream request: the backend stops.
                    raise ClientGone(response) from None
                finally:
                    watch.close()
                return response
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            if response is None or not response.prepared:
                timed_out = isinstance(exc, TimeoutError)
                raise GatewayError(
                    "upstream_timeout" if timed_out else "upstream_unreachable",
                    f"{model}: its backend at {endpoint} "
                    + ("did not answer in time" if timed_out else f"failed: {exc}"),
                    model=model,
                ) from None
            # Cut off mid-answer: the client must see the answer end abruptly, not as if
            # it were complete, so the connection is dropped rather than finished.
            log.warning("gateway.upstream_cut", model=model, reason=str(exc) or type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
