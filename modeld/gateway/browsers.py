"""What a web page in the operator's browser must not be able to make the gateway do.

A gateway without keys on loopback (the default) is reachable by every page the
operator's browser opens: a `fetch(..., {mode: "no-cors"})` would run a switch (CSRF),
and a domain the attacker points at 127.0.0.1 would be served as if it were ours (DNS
rebinding). So, before any route runs:

- `Host` must name the listen address, loopback, an IP address, or one of
  `[gateway] allowed_hosts`, for every request that carries no key: the page's files,
  and `/health` and `/metrics` where `*_without_key` opens them (a rebound page could
  read them). A request with a key is checked only when allowed_hosts is set: a page
  cannot send the key, and a load balancer's host names are many;
- a request carrying an `Origin` other than the gateway's own, or one of
  `allowed_origins`, is 403 (browsers send Origin on every cross-site POST and fetch);
  CORS is answered, preflights included, for the allowed origins only;
- a POST body must be `application/json` (415): `text/plain`, a form or nothing a
  browser may send cross-site without a preflight is ever parsed;
- every answer carries a strict Content-Security-Policy (no inline script), frame
  denial, `nosniff` and `no-referrer`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from modeld.core.addresses import LOOPBACK_NAMES
from modeld.core.gateway_config import GatewayConfig
from modeld.gateway.errors import GatewayError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Accept, X-Request-Id"
JSON_TYPES = frozenset({"application/json"})
CORS_ORIGIN: web.RequestKey[str] = web.RequestKey("cors_origin", str)


def host_name(host: str) -> str:
    """The name in a Host header, without its port; IPv6 without brackets; lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    """The Host, Origin and Content-Type checks, CORS, and the security headers."""

    def __init__(self, config: GatewayConfig, keyed: Callable[[], bool]) -> None:
        listen = host_name(config.listen)
        self._hosts = frozenset(
            {*LOOPBACK_NAMES, *(host_name(h) for h in config.allowed_hosts), listen}
        )
        self._check_hosts_with_keys = bool(config.allowed_hosts)
        self._origins = frozenset(origin.lower() for origin in config.allowed_origins)
        self._keyed = keyed

    def _host_allowed(self, request: web.Request) -> bool:
        with_key = self._keyed() and "Authorization" in request.headers
        if with_key and not self._check_hosts_with_keys:
            return True
        name = host_name(request.host)
        # An IP address cannot be rebound: a page at another address never sends it.
        return name in self._hosts or _is_ip(name)

    def _origin(self, request: web.Request) -> tuple[bool, str | None]:
        """Whether the request's Origin may call us, and the origin to answer CORS for
        (None for the gateway's own pages and requests without Origin)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True, None
        lowered = origin.strip().lower()
        own = {f"http://{request.host.lower()}", f"https://{request.host.lower()}"}
        if lowered in own:
            return True, None
        if lowered in self._origins:
            return True, origin.strip()
        return False, None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse what a foreign page could send; answer an allowed origin's preflight."""
        if not self._host_allowed(request):
            raise GatewayError(
                "forbidden_host",
                "this gateway does not serve that host name (gateway.allowed_hosts)",
            )
        allowed, cors = self._origin(request)
        if not allowed:
            raise GatewayError(
                "forbidden_origin",
                "requests from that web origin are refused (gateway.allowed_origins)",
            )
        if cors is not None:
            request[CORS_ORIGIN] = cors
            if request.method == "OPTIONS":
                # A preflight from an allowed origin: say what it may send.
                return web.Response(
                    status=204,
                    headers={
                        "Access-Control-Allow-Methods": CORS_METHODS,
                        "Access-Control-Allow-Headers": CORS_HEADERS,
                        "Access-Control-Max-Age": "600",
                    },
                )
        if (
            request.method == "POST"
            and request.body_exists
            and request.content_type not in JSON_TYPES
        ):
            raise GatewayError(
                "unsupported_media_type",
                "a request body must be JSON (Content-Type: application/json)",
            )
        return await handler(request)

    @staticmethod
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's headers, streamed ones and errors included (aiohttp calls this
        just before the headers go out)."""
        response.headers.update(SECURITY_HEADERS)
        cors = request.get(CORS_ORIGIN)
        if cors is not None:
            response.headers["Access-Control-Allow-Origin"] = cors
            response.headers["Vary"] = "Origin"
