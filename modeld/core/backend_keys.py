"""The key a backend demands on its OpenAI routes (vLLM's `--api-key`), read from a
model's `api_key_file`: the daemon starts the backends it launches with it
(adapters/backendkeys.py), the gateway sends it upstream as the bearer token, and
check-config reads it as both will. The key is never logged.
"""

from __future__ import annotations

from pathlib import Path

from modeld.core.config import Config, ModelConfig
from modeld.core.errors import ConfigError

MIN_KEY_CHARS = 8


def key_in(path: Path) -> str:
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
        return key_in(model.api_key_file)
    except ValueError as exc:
        raise ConfigError(f"{source}: {field}: {exc}", file=source, fields=[field]) from None


def backend_keys(config: Config, source: str = "<config>") -> dict[str, str]:
    """Every model's backend key, by model name (the gateway's upstream credentials)."""
    keys = {}
    for name, model in config.models.items():
        if (key := read_backend_key(model, source)) is not None:
            keys[name] = key
    return keys
