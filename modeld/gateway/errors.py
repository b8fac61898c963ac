"""The gateway's errors and their HTTP statuses, in this one place.

Every refusal is a GatewayError: the daemon's errors (by their `data.error` name) and
the gateway's own. Inference and OpenAI paths answer in OpenAI's shape
(`{"error": {"message", "type", "code", ...}}`); the seed's endpoints in the seed's
(`{"status": "error", "error", "message", ...numbers}`, never with a 2xx status).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modeld.client import DaemonUnreachable, RpcError
from modeld.core.redaction import without_backend_output

STATUS: dict[str, int] = {
    # The daemon's errors.
    "invalid_params": 400,
    "permission_denied": 403,
    "load_rate_limited": 429,
    "unknown_model": 404,
    "models_busy": 409,
    "name_collision": 409,
    "limit_reached": 429,
    "unknown_lease": 500,
    "invalid_config": 500,
    "operation_failed": 502,
    "insufficient_memory": 503,
    "load_failed": 503,
    "crash_loop": 503,
    "gpu_unusable": 503,
    "runtime_unavailable": 503,
    "gpu_unavailable": 503,
    "sleep_mode_failed": 503,
    "too_many_connections": 503,
    "timeout": 504,
    # The gateway's own.
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "forbidden_host": 403,
    "forbidden_origin": 403,
    "too_large": 413,
    "unsupported_media_type": 415,
    "too_many_requests": 429,
    "key_queue_full": 429,
    "key_bodies_full": 429,
    "upstream_unreachable": 502,
    "upstream_unauthorized": 502,
    "upstream_error": 502,
    "upstream_cut": 502,
    "model_failed": 502,
    "daemon_unreachable": 503,
    "queue_full": 503,
    "bodies_full": 503,
    "upstream_timeout": 504,
}
# OpenAI's error `type` for a status.
TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
# Worth retrying after this many seconds (a Retry-After header). A model that cannot
# fit here (beside pinned or busy models, or memory others hold) says so at once, so a
# router tries another host; here it may fit once that memory is released. A daemon
# that does not answer is being restarted, or this host is down: elsewhere meanwhile.
RETRY_AFTER_S: dict[str, int] = {
    "models_busy": 10,
    "too_many_requests": 1,
    "limit_reached": 1,
    "insufficient_memory": 30,
    "daemon_unreachable": 5,
}


# How much of a caller-chosen string (a path, a model name) a log line keeps.
LOG_CHARS = 128


def cut(text: str, limit: int = LOG_CHARS) -> str:
    """A caller-chosen string as a log line may hold it: at most `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "…"


class GatewayError(Exception):
    """A refusal with its kind (which fixes the HTTP status), message and details."""

    def __init__(self, kind: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.data = data
        # Seconds to wait before trying again, when it depends on the case (a budget).
        self.retry_after: int | None = None
        # The methods a route takes (405's Allow header).
        self.allow: str | None = None

    @property
    def status(self) -> int:
        """The HTTP status for this kind of error."""
        return STATUS.get(self.kind, 500)

    @classmethod
    def from_rpc(cls, exc: RpcError) -> GatewayError:
        """The daemon's JSON-RPC error, with its details."""
        data = dict(exc.data) if isinstance(exc.data, dict) else {}
        kind = str(data.pop("error", "invalid_params" if exc.code == -32602 else "error"))
        return cls(kind, exc.message, **data)

    @classmethod
    def from_unreachable(cls, exc: DaemonUnreachable) -> GatewayError:
        """The daemon does not answer on its socket."""
        return cls("daemon_unreachable", f"modeld is not reachable: {exc.reason}")


def for_caller(error: GatewayError, *, admin: bool) -> GatewayError:
    """The error as a caller may see it: backends' output for admins only."""
    if admin:
        return error
    shown = GatewayError(error.kind, error.message, **without_backend_output(error.data))
    shown.retry_after, shown.allow = error.retry_after, error.allow
    return shown


def _headers(error: GatewayError) -> dict[str, str]:
    retry = error.retry_after if error.retry_after is not None else RETRY_AFTER_S.get(error.kind)
    headers = {"Retry-After": str(retry)} if retry is not None else {}
    if error.allow is not None:
        headers["Allow"] = error.allow
    return headers


def openai_body(error: GatewayError) -> dict[str, Any]:
    """OpenAI's error shape; the daemon's details ride along in the error object."""
    return {
        "error": {
            **error.data,
            "message": error.message,
            "type": TYPES.get(error.status, "server_error"),
            "code": error.kind,
            "param": None,
        }
    }


def openai_response(error: GatewayError) -> web.Response:
    """The error as OpenAI answers one."""
    return web.json_response(openai_body(error), status=error.status, headers=_headers(error))


def seed_response(error: GatewayError) -> web.Response:
    """The seed router's shape: `status: error`, the error's name, message and numbers
    at the top level (`detail` too, as FastAPI's HTTPException gave it)."""
    body = {
        **error.data,
        "status": "error",
        "error": error.kind,
        "message": error.message,
        "detail": error.message,
    }
    return web.json_response(body, status=error.status, headers=_headers(error))
