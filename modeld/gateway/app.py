"""The gateway's aiohttp application: routes, and the two middlewares (errors, keys)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from modeld.core.gateway_config import GatewayConfig
from modeld.gateway.admin import Admin
from modeld.gateway.auth import IDENTITY, BackendKeys, Keys, identity
from modeld.gateway.browsers import BrowserGuard
from modeld.gateway.errors import (
    GatewayError,
    cut,
    for_caller,
    openai_response,
    seed_response,
)
from modeld.gateway.guard import ConnectionGuard
from modeld.gateway.link import DaemonLink
from modeld.gateway.metrics import GatewayMetrics
from modeld.gateway.protocol import ModelServerMetrics
from modeld.gateway.proxy import INFERENCE_PATHS, Proxy
from modeld.gateway.serverlog import RequestErrors
from modeld.gateway.sse import EventStreams

log = structlog.get_logger("modeld.gateway")

STATIC = Path(__file__).resolve().parent / "static"
# The seed's endpoints answer errors in the seed's shape; everything else in OpenAI's.
SEED_ROUTES = frozenset({"seed-status", "seed-switch", "seed-action"})
# What loads without a key: the dashboard's own files (it then asks for a key).
PUBLIC_ROUTES = frozenset({"page", "static"})
# What only admin keys may use: everything that starts, stops, switches or forces, the
# metrics and the recent requests (they name every key) and backends' logs (their output
# may quote prompts).
# Inference keys may use the rest.
ADMIN_ROUTES = frozenset({"seed-switch", "seed-action", "metrics", "model-logs", "requests"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

KEYS: web.AppKey[Keys] = web.AppKey("keys", Keys)
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
# The routes served without a key: the page's files, and /health and /metrics where the
# config says (load balancers and Prometheus send no key).
OPEN: web.AppKey[frozenset[str]] = web.AppKey("open", frozenset)
# Whether a scrape of /metrics with no Authorization header gets the model-server
# families only (an endpoint picker sends no key), and the request's mark that it does.
PROTOCOL_OPEN: web.AppKey[bool] = web.AppKey("protocol_open", bool)
PROTOCOL_ONLY: web.RequestKey[bool] = web.RequestKey("protocol_only", bool)


def _route_name(request: web.Request) -> str | None:
    route = request.match_info.route
    return route.name if route is not None else None


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal, in one place: GatewayError and aiohttp's own HTTP errors (404,
    405, 413) become the route's error shape with the status of their kind."""
    try:
        return await handler(request)
    except GatewayError as exc:
        # Answered here: its traceback (every frame it passed, with their locals: a
        # request's body) is not kept alive by a cycle through this frame.
        error = exc.with_traceback(None)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kinds = {
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
            415: "unsupported_media_type",
        }
        allow = exc.headers.get("Allow") if exc.status == 405 else None
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"{request.method} is not allowed here; use {allow}",
            413: "the request body is too large (gateway.max_body_bytes)",
        }.get(exc.status, exc.reason)
        error = GatewayError(kinds.get(exc.status, "bad_request"), message)
        error.allow = allow
    request.app[METRICS].errors.labels(error.kind).inc()
    caller = identity(request)
    error = for_caller(error, admin=caller is not None and caller.admin)
    if _route_name(request) in SEED_ROUTES:
        return seed_response(error)
    return openai_response(error)


@web.middleware
async def keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`Authorization: Bearer <key>` on everything but the dashboard's files; admin-only
    routes refuse other keys (403, nothing done)."""
    route = _route_name(request)
    if route in request.app[OPEN]:
        return await handler(request)
    caller = request.app[KEYS].identify(request.headers.get("Authorization"))
    # No key at all (a wrong one is refused, not served less): the picker's scrape.
    unkeyed = "Authorization" not in request.headers
    if caller is None and route == "metrics" and unkeyed and request.app[PROTOCOL_OPEN]:
        request[PROTOCOL_ONLY] = True
        return await handler(request)
    if caller is None:
        log.info("gateway.unauthorized", path=cut(request.path), peer=request.remote)
        raise GatewayError("unauthorized", "a valid API key is required (Authorization: Bearer)")
    request[IDENTITY] = caller
    if route in ADMIN_ROUTES and not caller.admin:
        log.info("gateway.denied", path=cut(request.path), key=caller.name, peer=request.remote)
        raise GatewayError(
            "permission_denied",
            f"the key {caller.name} is an inference key: starting, stopping, switching, "
            "backends' logs and the metrics need an admin key",
        )
    return await handler(request)


class Gateway:
    """The application and its parts: proxy, admin endpoints, event streams, metrics."""

    def __init__(
        self,
        config: GatewayConfig,
        link: DaemonLink,
        accepted: Keys,
        backend_keys: BackendKeys | None = None,
    ) -> None:
        self.config = config
        self.link = link
        self.keys = accepted
        self.backend_keys = backend_keys or BackendKeys({})
        self.metrics = GatewayMetrics()
        self.guard = ConnectionGuard(config, self.metrics)
        self.browsers = BrowserGuard(config, lambda: self.keys.required)
        self.proxy = Proxy(link, config, self.metrics, (self.keys, self.backend_keys))
        self.metrics.waiting.set_function(lambda: self.proxy.queue.held)
        self.metrics.waiting_bytes.set_function(lambda: self.proxy.waiting_bytes.held)
        self.streams = EventStreams(
            link.events, self.metrics, config.max_event_streams, config.max_event_streams_per_client
        )
        self.admin = Admin(link, self.streams, self.proxy.bodies)
        self.model_server = ModelServerMetrics()
        self.app = self._build()

    def _build(self) -> web.Application:
        app = web.Application(
            middlewares=[self.guard.middleware, errors, self.browsers.middleware, keys],
            client_max_size=self.config.max_body_bytes,
        )
        app[KEYS] = self.keys
        app[METRICS] = self.metrics
        app[OPEN] = PUBLIC_ROUTES | {
            route
            for route, open_ in (
                ("health", self.config.health_without_key),
                ("metrics", self.config.metrics_without_key),
            )
            if open_
        }
        app[PROTOCOL_OPEN] = self.config.model_server_metrics_without_key
        router = app.router
        for path in INFERENCE_PATHS:
            router.add_post(path, self.proxy.handle, name=f"infer{path.replace('/', '-')}")
        router.add_get("/v1/models", self.admin.models, name="models")
        router.add_get("/v1/models/status", self.admin.status, name="seed-status")
        # After the seed's path: a model named "status" is reached through the list; none
        # named "switch" (GET /v1/models/switch is the switch asked with the wrong method).
        router.add_get(r"/v1/models/{name:(?!switch$)[^/]+}", self.admin.model, name="model")
        router.add_get("/v1/models/{name}/plan", self.admin.plan, name="model-plan")
        router.add_get("/v1/history", self.admin.history, name="history")
        router.add_get("/v1/requests", self._requests, name="requests")
        router.add_get("/v1/models/{name}/logs", self.admin.logs, name="model-logs")
        router.add_post("/v1/models/switch", self.admin.switch, name="seed-switch")
        router.add_post(
            r"/v1/models/{name}/{action:start|stop|restart}",
            self.admin.action,
            name="seed-action",
        )
        router.add_get("/events", self.streams.handle, name="events")
        router.add_get("/metrics", self._metrics, name="metrics")
        router.add_get("/health", self._health, name="health")
        if STATIC.is_dir():
            router.add_get("/", self._page, name="page")
            router.add_static("/static/", STATIC, name="static")
        app.on_response_prepare.append(self.browsers.on_prepare)
        # The backends' client sessions live as long as the app: aiohttp's runner opens
        # and closes them.
        app.cleanup_ctx.append(self._sessions)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _sessions(self, app: web.Application) -> AsyncIterator[None]:
        await self.proxy.upstream.start()
        yield
        await self.proxy.upstream.close()

    async def _shutdown(self, app: web.Application) -> None:
        self.streams.closing.set()  # event streams end, so the shutdown does not wait on them

    async def _metrics(self, request: web.Request) -> web.Response:
        """The gateway's own metrics, then this host as a GIE model server (from the
        daemon's status; left out while the daemon does not answer). A scrape let in by
        model_server_metrics_without_key gets the model server's families alone."""
        body = b"" if request.get(PROTOCOL_ONLY) else self.metrics.exposition()
        try:
            body += self.model_server.exposition(await self.link.status())
        except GatewayError as exc:
            log.warning("gateway.metrics_without_models", reason=exc.message)
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def _requests(self, request: web.Request) -> web.Response:
        """`GET /v1/requests` (admin keys): the latest requests answered, newest last:
        model (a configured name, or `unknown`), path, status, seconds, key name."""
        return web.json_response({"requests": list(self.proxy.recent)})

    async def _health(self, request: web.Request) -> web.Response:
        """200 when the daemon answers `ping`, else 503."""
        pong = await self.link.call("ping")
        return web.json_response({"gateway": "ok", "modeld": pong.get("version")})

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")


class GatewayServer:
    """A Gateway listening on HOST:PORT, with its relay of the daemon's events."""

    def __init__(self, gateway: Gateway, shutdown_timeout_s: float = 30.0) -> None:
        self.gateway = gateway
        # Cancel a request's handler when its client hangs up: its wait for a model, or
        # its upstream request, ends at once, and its lease with it.
        self._runner = web.AppRunner(
            gateway.app,
            handler_cancellation=True,
            access_log=None,
            # Bodies are inflated by the proxy, within max_body_bytes (gateway/body.py).
            auto_decompress=False,
            shutdown_timeout=shutdown_timeout_s,
            # Malformed requests in one short line each, never a header value (serverlog.py).
            logger=RequestErrors(),
        )
        self._relay: asyncio.Task[None] | None = None
        self._listener: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen; OSError when the address is taken."""
        await self._runner.setup()
        assert self._runner.server is not None
        self._relay = asyncio.create_task(self.gateway.link.follow_events())
        # aiohttp's protocol factory, each connection under the guard's deadlines.
        self._listener = await asyncio.get_running_loop().create_server(
            self.gateway.guard.factory(self._runner.server), host, port, reuse_address=True
        )

    async def close(self) -> None:
        """Stop listening, let answers in flight end (up to the shutdown timeout), close
        the daemon connections (leases still held end with them)."""
        if self._relay is not None:
            self._relay.cancel()
            await asyncio.gather(self._relay, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()  # no new connections; those open finish below
        await self._runner.cleanup()
        await self.gateway.link.close()
