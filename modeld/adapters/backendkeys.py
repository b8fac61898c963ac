"""What a launched backend gets besides its command: its kept vLLM cache, and the key it
demands on its OpenAI routes (vLLM's `--api-key`) from the model's `api_key_file`
(read by core/backend_keys.py): modeld starts it with VLLM_API_KEY set to it. The key
is never logged.

vLLM checks the key only under /v1, /v2, /inference and /cohere: /health and /metrics
(all modeld itself asks a backend for, with /sleep and /wake_up) need none.
"""

from __future__ import annotations

from modeld.core.backend_keys import key_in
from modeld.core.config import ModelConfig
from modeld.core.errors import LoadFailed

# vLLM reads its key from this variable when `--api-key` is not given.
KEY_VARIABLE = "VLLM_API_KEY"
# Where a container's vLLM keeps its cache (the model's vllm_cache_dir is mounted there).
CONTAINER_VLLM_CACHE = "/root/.cache/vllm"


def prepare_cache(model: ModelConfig) -> None:
    """Make the model's vLLM cache directory (kept across starts); LoadFailed saying why
    when it cannot be made."""
    if model.vllm_cache_dir is None:
        return
    try:
        model.vllm_cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoadFailed(
            f"{model.name}: vllm_cache_dir {model.vllm_cache_dir}: {exc.strerror}",
            model=model.name,
            reason="cache directory",
        ) from None


def launch_environment(model: ModelConfig, container: bool = False) -> dict[str, str]:
    """The environment a launched backend gets: the model's `launch_env` and its kept
    vLLM cache (VLLM_CACHE_ROOT, unless `env` sets it; the mount point in a container),
    with its key from `api_key_file`; LoadFailed when there is none to read (the load
    fails saying why, rather than a backend starting open)."""
    env = model.launch_env
    if model.vllm_cache_dir is not None and "VLLM_CACHE_ROOT" not in env:
        cache = CONTAINER_VLLM_CACHE if container else str(model.vllm_cache_dir)
        env = {"VLLM_CACHE_ROOT": cache, **env}
    if model.api_key_file is None:
        return env
    try:
        key = key_in(model.api_key_file)
    except ValueError as exc:
        raise LoadFailed(
            f"{model.name}: api_key_file: {exc}", model=model.name, reason="no backend key"
        ) from None
    return {**env, KEY_VARIABLE: key}
