"""HTTP over the daemon's own methods: the seed router's `/v1/models/status` and
`/v1/models/switch?target_model=`, start / stop / restart of one model, and the
OpenAI model list. The daemon decides; these only translate."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from modeld.client import Client, DaemonUnreachable, RpcError
from modeld.core.naming import not_found
from modeld.gateway.auth import identity
from modeld.gateway.body import Bodies
from modeld.gateway.errors import GatewayError
from modeld.gateway.link import DaemonLink
from modeld.gateway.sse import EventStreams
from modeld.wire.status import ModelStatus, without_backend_output

# A backend's lines sent at once (`?lines=`), by default and at most.
LOG_LINES = 100
MAX_LOG_LINES = 10_000
# History entries asked for at once, by default and at most (what `history` takes).
HISTORY_SHOWN = 50
MAX_HISTORY = 500

# What a model's entry in /v1/models carries from modeld's status, besides OpenAI's.
LISTED = {
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
}


Fields = Mapping[str, object]
# What the switch endpoint reads, from its query string or a JSON object body.
SWITCH_FIELDS = frozenset({"target_model", "wait", "force", "timeout"})


def _flag(fields: Fields, name: str, default: bool) -> bool:
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise GatewayError("bad_request", f"{name} must be true or false")


def _timeout(fields: Fields) -> float | None:
    value = fields.get("timeout")
    if value is None:
        return None
    try:
        seconds = float(value) if isinstance(value, str | int | float) else -1.0
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise GatewayError("bad_request", "timeout must be seconds > 0")
    return seconds


async def _switch_fields(request: web.Request, bodies: Bodies) -> Fields:
    """The query string's fields, and a JSON object body's (`{"target_model": ...}`, as
    the seed's clients may send; read as inference bodies are, within their bounds); the
    query string wins where both say."""
    fields: dict[str, object] = {}
    if request.body_exists:
        body = await bodies.parsed(await bodies.read(request, lambda _: None))
        unknown = sorted(set(body) - SWITCH_FIELDS)
        if unknown:
            raise GatewayError(
                "bad_request",
                f"unknown field {unknown[0][:64]!r}; the switch takes "
                + ", ".join(sorted(SWITCH_FIELDS)),
            )
        fields.update(body)
    fields.update(request.query)
    return fields


def _whole(value: str, name: str, most: int) -> int:
    """`value` as a whole number from 1 to `most` (ASCII digits only: `²` is a digit to
    str.isdigit, not to int); 400 otherwise."""
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= most:
        raise GatewayError("bad_request", f"{name} must be a whole number from 1 to {most}")
    return int(value)


def _lines(fields: Fields) -> int:
    return _whole(str(fields.get("lines", LOG_LINES)), "lines", MAX_LOG_LINES)


class Admin:
    """The seed's endpoints and the model list."""

    def __init__(self, link: DaemonLink, streams: EventStreams, bodies: Bodies) -> None:
        self._streams = streams
        self._link = link
        self._bodies = bodies

    async def status(self, request: web.Request) -> web.Response:
        """`GET /v1/models/status`: every model and the GPU, with the seed's fields."""
        status = await self._link.status()
        caller = identity(request)
        # Backends' output (command lines, prompts) is for admins only.
        shown = status if caller and caller.admin else without_backend_output(status)
        return web.json_response(text=shown.model_dump_json())

    async def switch(self, request: web.Request) -> web.Response:
        """`POST /v1/models/switch?target_model=NAME[&wait=false][&force=true][&timeout=S]`,
        or the same fields in a JSON object body."""
        fields = await _switch_fields(request, self._bodies)
        target = fields.get("target_model")
        if not isinstance(target, str) or not target:
            raise GatewayError("bad_request", "target_model is required (a model's name)")
        return await self._load(fields, "switch", target)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/models/{name}/logs[?lines=N][&follow=true]` (admin keys): a backend's
        last lines as JSON, or (follow) those and each new one as server-sent events,
        `data: {"model", "line"}`, until the backend ends (`event: end`). A follower
        takes an event-stream place (max_event_streams) and a daemon connection."""
        name, lines = request.match_info["name"], _lines(request.query)
        # An unknown model (or an unreachable daemon) is refused before any stream.
        last = await self._link.call("logs", model=name, lines=lines)
        if not _flag(request.query, "follow", False):
            return web.json_response(last)
        with self._streams.slot(request):
            try:
                async with Client(self._link.socket) as client:
                    following = client.follow(name, lines).__aiter__()

                    async def next_line() -> str | None:
                        try:
                            return json.dumps({"model": name, "line": await anext(following)})
                        except (StopAsyncIteration, RpcError, DaemonUnreachable):
                            return None

                    return await self._streams.relay(request, next_line, b": modeld logs\n\n")
            except DaemonUnreachable as exc:
                raise GatewayError.from_unreachable(exc) from None

    async def history(self, request: web.Request) -> web.Response:
        """`GET /v1/history[?model=NAME][&limit=N]`: what was done to models and why."""
        limit = request.query.get("limit")
        answer = await self._link.call(
            "history",
            model=request.query.get("model") or None,
            limit=_whole(limit, "limit", MAX_HISTORY) if limit else HISTORY_SHOWN,
        )
        return web.json_response(answer)

    async def plan(self, request: web.Request) -> web.Response:
        """`GET /v1/models/{name}/plan[?force=true]`: what a switch would do now, and why
        (the daemon's dry run; any key that may read)."""
        name = request.match_info["name"]
        params = {"force": True} if _flag(request.query, "force", False) else {}
        return web.json_response(await self._link.call("plan", model=name, **params))

    async def action(self, request: web.Request) -> web.Response:
        """`POST /v1/models/{name}/{start|stop|restart}`."""
        name, action = request.match_info["name"], request.match_info["action"]
        if action == "stop":
            params = {"force": True} if _flag(request.query, "force", False) else {}
            return web.json_response(await self._link.call("stop", model=name, **params))
        return await self._load(request.query, action, name)

    async def _load(self, fields: Fields, method: str, model: str) -> web.Response:
        params: dict[str, object] = {"model": model, "wait": _flag(fields, "wait", True)}
        if method == "switch" and _flag(fields, "force", False):
            params["force"] = True
        timeout = _timeout(fields)
        if timeout is not None:
            params["timeout"] = timeout
        # A switch may wait for a drain, a stop and a load: the daemon's own deadlines
        # (drain_timeout_s, load_timeout_s) bound it; ours is their sum and a margin.
        waited = timeout if timeout is not None else 3600.0
        result = await self._link.call(method, wait_s=waited, **params)
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
        status = await self._link.status()
        data = []
        for name, view in status.models.items():
            data.append(_listed(name, view))
            # Each alias is listed too, as OpenAI clients look names up in this list.
            data += [_listed(alias, view, alias_of=name) for alias in view.aliases]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        """`GET /v1/models/{name}`: OpenAI's retrieve, with modeld's state and figures."""
        asked = request.match_info["name"]
        models = (await self._link.status()).models
        name = self._link.canonical(asked)
        if name not in models:
            raise GatewayError(
                "unknown_model",
                not_found(asked, models, self._link.aliases),
                model=name,
                available=sorted(models),
            )
        alias_of = name if asked != name else None
        return web.json_response(_listed(asked, models[name], alias_of=alias_of))


def _listed(name: str, view: ModelStatus, alias_of: str | None = None) -> dict[str, Any]:
    """One model as OpenAI lists it, with modeld's figures beside (an alias says whose)."""
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "modeld",
        **({"alias_of": alias_of} if alias_of else {}),
        **view.model_dump(mode="json", include=LISTED),
    }
