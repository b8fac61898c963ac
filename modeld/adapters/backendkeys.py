"""The key a backend demands on its OpenAI routes (vLLM's `--api-key`), from a model's
`api_key_file`: modeld starts the backends it launches with VLLM_API_KEY set to it, and
the gateway sends it upstream as the bearer token. The key is never logged.

vLLM checks the key only under /v1, /v2, /inference and /cohere: /health and /metrics
(all modeld itself asks a backend for, with /sleep and /wake_up) need none.
"""

from __future__ import annotations

from pathlib import Path

from modeld.core.config import Config, ModelConfig
from modeld.core.errors import ConfigError, LoadFailed

# vLLM reads its key from this variable when `--api-key` is not given.
KEY_VARIABLE = "VLLM_API_KEY"
MIN_KEY_CHARS = 8


def _key_in(path: Path) -> str:
    """The key in a key file (its first line); ValueError saying why there is none."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    lines = text.strip().splitlines()
    key = lines[0].strip() if lines else ""
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"{path} holds no key of {MIN_KEY_CHARS} characters or more")
    return key


def read_backend_key(model: ModelConfig, source: str = "<config>") -> str | None:
    """The key in the model's `api_key_file`, or None when it has none; ConfigError
    naming the field when the file cannot be read or holds no key."""
    if model.api_key_file is None:
        return None
    field = f"models.{model.name}.api_key_file"
    try:
        return _key_in(model.api_key_file)
    except ValueError as exc:
        raise ConfigError(f"{source}: {field}: {exc}", file=source, fields=[field]) from None


def backend_keys(config: Config, source: str = "<config>") -> dict[str, str]:
    """Every model's backend key, by model name (the gateway's upstream credentials)."""
    keys = {}
    for name, model in config.models.items():
        if (key := read_backend_key(model, source)) is not None:
            keys[name] = key
    return keys


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
        key = _key_in(model.api_key_file)
    except ValueError as exc:
        raise LoadFailed(
            f"{model.name}: api_key_file: {exc}", model=model.name, reason="no backend key"
        ) from None
    return {**env, KEY_VARIABLE: key}
