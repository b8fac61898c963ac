"""The gateway's side toward the backends: one HTTP client session (and one per backend
on a Unix socket), a request sent with only a few of the caller's headers (never its
Authorization: the backend's own key is sent instead, when its model has one), and the
answer streamed back piece by piece, each piece taken by the caller within its deadline.
An answer the backend breaks off ends abruptly for the caller too, never as if whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from modeld.core.gateway_config import GatewayConfig
from modeld.gateway.auth import BackendKeys
from modeld.gateway.errors import GatewayError, cut
from modeld.gateway.streaming import ClientGone, SlowReader

log = structlog.get_logger("modeld.gateway.upstream")

# Request headers passed to the backend; the answer's headers that come back.
FORWARDED = ("Content-Type", "Accept", "Accept-Encoding", "X-Request-Id", "User-Agent")
RETURNED = ("Content-Type", "Content-Encoding", "X-Request-Id")

# Set on a request once its answer was written whole: a hang-up after that (a client
# that sent `Connection: close` and read everything) is not a hang-up.
ANSWERED: web.RequestKey[int] = web.RequestKey("answered", int)
# Set on a request whose answer began as a 200 but failed on the way (an error event
# after the headers, or an upstream that broke off): what it really came to, for the
# log, the metrics and /v1/requests.
FAILED: web.RequestKey[GatewayError] = web.RequestKey("failed", GatewayError)
# Set on a request once the backend's answer began to go out (its headers sent).
BEGUN: web.RequestKey[web.StreamResponse] = web.RequestKey("begun", web.StreamResponse)


class Upstream:
    """The backends, as the proxy reaches them."""

    def __init__(self, config: GatewayConfig, backend_keys: BackendKeys) -> None:
        self._config = config
        self._backend_keys = backend_keys
        self._session: aiohttp.ClientSession | None = None
        self._unix: dict[str, aiohttp.ClientSession] = {}

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None,
            connect=self._config.upstream_connect_timeout_s,
            sock_read=self._config.upstream_read_timeout_s,
        )

    async def start(self) -> None:
        """Open the session to the backends."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._config.max_requests),
            # Bytes pass through as the backend sent them (compressed or not).
            auto_decompress=False,
            timeout=self._timeout(),
        )

    async def close(self) -> None:
        """Close the sessions."""
        sessions = [*self._unix.values(), *([self._session] if self._session else [])]
        self._session, self._unix = None, {}
        for session in sessions:
            await session.close()

    def _upstream(self, endpoint: str) -> tuple[aiohttp.ClientSession, str]:
        """The session that reaches `endpoint`, and the URL base to put paths on: a
        `unix:/path.sock` backend gets a session of its own (aiohttp binds a Unix
        connector to one path); there is one per configured socket."""
        assert self._session is not None, "start() first"
        if not endpoint.startswith("unix:"):
            return self._session, endpoint.rstrip("/")
        path = endpoint.removeprefix("unix:")
        session = self._unix.get(path)
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path, limit=self._config.max_requests),
                auto_decompress=False,
                timeout=self._timeout(),
            )
            self._unix[path] = session
        return session, "http://localhost"

    async def forward(
        self,
        request: web.Request,
        endpoint: str,
        model: str,
        body: bytes | AsyncIterator[bytes],
        early: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """Send the request to `model`'s backend at `endpoint`; stream its answer back as
        it comes (a streamed request that waited for a load: into `early`, whose headers
        went out already)."""
        session, base = self._upstream(endpoint)
        headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
        headers.update(self._backend_keys.header(model))
        # The allowlisted path, and the query string exactly as the caller sent it.
        query = request.rel_url.raw_query_string
        # encoded=True: yarl would otherwise normalise it (%2F becomes /).
        url = URL(base + request.path + (f"?{query}" if query else ""), encoded=True)
        response: web.StreamResponse | None = None
        try:
            async with session.post(url, data=body, headers=headers) as upstream:
                if upstream.status == 401:
                    # The caller's key was accepted; the backend refused the gateway's.
                    raise GatewayError(
                        "upstream_unauthorized",
                        f"{model}: its backend at {endpoint} refused the gateway's key: "
                        f"its api_key_file must hold the key the backend was started with",
                        model=model,
                    )
                if early is not None and upstream.status != 200:
                    # The headers went out already: the backend's refusal as an event.
                    raise GatewayError(
                        "upstream_error",
                        f"{model}: its backend answered {upstream.status}: "
                        + cut((await upstream.content.read(64 * 1024)).decode(errors="replace")),
                        model=model,
                        upstream_status=upstream.status,
                    )
                response = early or web.StreamResponse(
                    status=upstream.status, reason=upstream.reason
                )
                if early is None:
                    for name in RETURNED:
                        if name in upstream.headers:
                            response.headers[name] = upstream.headers[name]
                    streamed = upstream.content_type == "text/event-stream"
                    if upstream.content_length is not None and not streamed:
                        response.content_length = upstream.content_length
                watch = SlowReader(request, self._config.client_write_timeout_s)
                try:
                    if not response.prepared:
                        await response.prepare(request)
                    request[BEGUN] = response
                    # Each piece as it arrives: a streamed answer's events flushed one by one.
                    async for chunk in upstream.content.iter_any():
                        watch.writing = True
                        await response.write(chunk)
                        watch.writing = False
                    await response.write_eof()
                    request[ANSWERED] = response.status
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
            request[FAILED] = GatewayError(
                "upstream_cut", f"{model}: its backend broke off the answer", model=model
            )
            if request.transport is not None:
                request.transport.abort()
            return response
