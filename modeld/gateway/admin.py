"""HTTP over the daemon's own methods: the seed router's `/v1/models/status` and
`/v1/models/switch?target_model=`, start / stop / restart of one model, and the
OpenAI model list. The daemon decides; these only translate."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modeld.core.redaction import without_backend_output
from modeld.gateway.auth import identity
from modeld.gateway.errors import GatewayError
from modeld.gateway.link import DaemonLink

# What a model's entry in /v1/models carries from modeld's status, besides OpenAI's.
LISTED = (
    "status",
    "health",
    "size_gb",
    "description",
    "estimated_load_time_seconds",
    "gpu_memory_used_gb",
    "gpu_memory_required_gb",
    "leases",
    "waiting",
    "sleep_mode",
    "since",
)


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise GatewayError("bad_request", f"query parameter {name} must be true or false")


def _timeout(request: web.Request) -> float | None:
    value = request.query.get("timeout")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise GatewayError("bad_request", "query parameter timeout must be seconds > 0")
    return seconds


class Admin:
    """The seed's endpoints and the model list."""

    def __init__(self, link: DaemonLink) -> None:
        self._link = link

    async def status(self, request: web.Request) -> web.Response:
        """`GET /v1/models/status`: every model and the GPU, with the seed's fields."""
        status = await self._link.call("status")
        caller = identity(request)
        # Backends' output (command lines, prompts) is for admins only.
        return web.json_response(
            status if caller and caller.admin else without_backend_output(status)
        )

    async def switch(self, request: web.Request) -> web.Response:
        """`POST /v1/models/switch?target_model=NAME[&wait=false][&force=true][&timeout=S]`."""
        target = request.query.get("target_model", "")
        if not target:
            raise GatewayError("bad_request", "query parameter target_model is required")
        return await self._load(request, "switch", target)

    async def action(self, request: web.Request) -> web.Response:
        """`POST /v1/models/{name}/{start|stop|restart}`."""
        name, action = request.match_info["name"], request.match_info["action"]
        if action == "stop":
            params = {"force": True} if _flag(request, "force", False) else {}
            return web.json_response(await self._link.call("stop", model=name, **params))
        return await self._load(request, action, name)

    async def _load(self, request: web.Request, method: str, model: str) -> web.Response:
        params: dict[str, Any] = {"model": model, "wait": _flag(request, "wait", True)}
        if method == "switch" and _flag(request, "force", False):
            params["force"] = True
        timeout = _timeout(request)
        if timeout is not None:
            params["timeout"] = timeout
        # A switch may wait for a drain, a stop and a load: the daemon's own deadlines
        # (drain_timeout_s, load_timeout_s) bound it; ours is their sum and a margin.
        waited = timeout if timeout is not None else 3600.0
        result = await self._link.call(method, timeout=waited, **params)
        if isinstance(result, dict) and result.get("status") == "already_loaded":
            result = {
                "message": f"Model '{model}' is already running and healthy",
                "model": model,
                **result,
            }
        return web.json_response(result)

    async def models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`: OpenAI's list, of every configured model (not only the
        loaded ones), each with modeld's state and figures."""
        status = await self._link.call("status")
        data = []
        for name, view in status["models"].items():
            data.append(_listed(name, view))
            # Each alias is listed too, as OpenAI clients look names up in this list.
            data += [_listed(alias, view, alias_of=name) for alias in view.get("aliases", [])]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        """`GET /v1/models/{name}`: OpenAI's retrieve, with modeld's state and figures."""
        asked = request.match_info["name"]
        models = (await self._link.call("status"))["models"]
        name = self._link.canonical(asked)
        if name not in models:
            raise GatewayError(
                "unknown_model",
                f"Model '{name}' not found. Available: {sorted(models)}",
                model=name,
                available=sorted(models),
            )
        alias_of = name if asked != name else None
        return web.json_response(_listed(asked, models[name], alias_of=alias_of))


def _listed(name: str, view: dict[str, Any], alias_of: str | None = None) -> dict[str, Any]:
    """One model as OpenAI lists it, with modeld's figures beside (an alias says whose)."""
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "modeld",
        **({"alias_of": alias_of} if alias_of else {}),
        **{key: view.get(key) for key in LISTED},
    }
