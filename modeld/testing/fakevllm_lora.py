"""LoRA adapters at run time in the fake vLLM, as vLLM 0.32's API server serves them
(read from its `serve/lora/api_router.py` and `openai/models/serving.py`).

With `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True it serves
`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` (200 with a text body; 400
`InvalidUserInput` without both fields, for the base's own name or a name loaded
already; 404 `NotFoundError` "Loading lora NAME failed: No adapter found for PATH" when
the path holds no adapter; 500 when the adapter's rank passes `--max-lora-rank`) and
`POST /v1/unload_lora_adapter {"lora_name"}` (404 `NotFoundError` for a name it does
not have). `/v1/models` lists each adapter with `root` (its path) and `parent` (the
base). Like vLLM, adapters past `--max-loras` stay listed (the engine's cache drops the
least recently used and reads it again on its next request): only modeld's own
accounting keeps the count.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

# The PEFT layout vLLM reads: the config (with the rank `r`) beside the weights.
ADAPTER_CONFIG = "adapter_config.json"


class FakeLoras:
    """The adapters loaded in one fake base, and the endpoints that load them."""

    def __init__(self, base: str, max_lora_rank: int = 16, load_seconds: float = 0.0) -> None:
        self.base = base
        self.max_lora_rank = max_lora_rank
        self.load_seconds = load_seconds
        # Name to the path it was loaded from, as the API server lists them.
        self.loaded: dict[str, str] = {}
        # Loads answered 200 (tests count what reached the base).
        self.loads = 0

    def add_routes(self, app: web.Application) -> None:
        """The load and unload endpoints (vLLM adds them only when runtime updating is on)."""
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)

    def serves(self, name: str) -> bool:
        """Whether requests may name `name` (an adapter loaded in this base)."""
        return name in self.loaded

    def cards(self, created: int) -> list[dict[str, object]]:
        """`/v1/models` entries of the loaded adapters."""
        return [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": path,
                "parent": self.base,
            }
            for name, path in self.loaded.items()
        ]

    async def _load(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return vllm_error(
                400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided."
            )
        if name == self.base:
            message = f"The lora adapter '{name}' conflicts with a served base model."
            return vllm_error(400, "InvalidUserInput", message)
        if name in self.loaded:
            message = (
                f"The lora adapter '{name}' has already been loaded. If you want to load "
                "the adapter in place, set 'load_inplace' to True."
            )
            return vllm_error(400, "InvalidUserInput", message)
        rank = _rank(Path(path))
        if rank is None:
            message = f"Loading lora {name} failed: No adapter found for {path}"
            return vllm_error(404, "NotFoundError", message)
        if rank > self.max_lora_rank:
            message = f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}."
            return vllm_error(500, "InternalServerError", message)
        await asyncio.sleep(self.load_seconds)
        self.loaded[name] = path
        self.loads += 1
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            message = "'lora_name' needs to be provided to unload a LoRA adapter."
            return vllm_error(400, "InvalidUserInput", message)
        if self.loaded.pop(name, None) is None:
            return vllm_error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


def _rank(path: Path) -> int | None:
    """The adapter's rank from its adapter_config.json; None if `path` holds no adapter."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    rank = config.get("r") if isinstance(config, dict) else None
    return rank if isinstance(rank, int) else None


async def json_body(request: web.Request) -> dict[str, object] | web.Response:
    """A request's JSON object, or vLLM's 400 for anything else."""
    try:
        body = await request.json()
    except ValueError:
        return vllm_error(400, "BadRequestError", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return vllm_error(400, "BadRequestError", "The request body must be a JSON object.")
    return body


def vllm_error(status: int, kind: str, message: str) -> web.Response:
    """vLLM's error body."""
    error = {"message": message, "type": kind, "param": None, "code": status}
    return web.json_response({"error": error}, status=status)
