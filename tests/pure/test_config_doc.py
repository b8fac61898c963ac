"""docs/configuration.md cannot go stale: every key of every table is documented, and
every default it states is the one the code has (the doc once missed four [gateway]
keys)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from modeld.core.config import DaemonConfig, ModelConfig
from modeld.core.gateway_config import GatewayConfig, MetricsConfig
from modeld.core.gpu_config import GpuConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "configuration.md").read_text()
GATEWAY_DOC = (ROOT / "docs" / "gateway.md").read_text()
TABLES: dict[str, type[BaseModel]] = {
    "`[daemon]`": DaemonConfig,
    "`[gpu]`": GpuConfig,
    "`[metrics]`": MetricsConfig,
    '`[models."NAME"]`': ModelConfig,
}
# Defaults the code works out when the key is absent: the doc says how, in words.
DERIVED = {
    "backend_socket_dir",
    "cache_dir",
    "hf_cache_dir",
    "container",
    "endpoint",
    "served_model_name",
    "vllm_cache_dir",
    "wake_time_seconds",
    "park_ram_gb",
    "adapters",
}


def default_of(model: type[BaseModel], key: str) -> Any:
    """A field's default, made by its factory where it has one."""
    field = model.model_fields[key]
    if field.default is not PydanticUndefined:
        return field.default
    return field.default_factory() if field.default_factory else None  # type: ignore[call-arg]


def as_written(value: Any, key: str) -> set[str]:
    """The ways the doc may write a default."""
    if value is None or value == "" or value == [] or value == {}:
        return {"none", "", "[]", "{}"}
    if isinstance(value, bool):
        return {str(value).lower()}
    if key.endswith("_mode") and isinstance(value, int):
        return {oct(value)}
    if isinstance(value, float) and value.is_integer():
        return {str(int(value)), str(value)}
    if isinstance(value, list):
        return {"[" + ", ".join(min(as_written(v, key), key=len) for v in value) + "]"}
    return {str(value)}


def rows(heading: str) -> list[tuple[str, str]]:
    """(key, default) of each row of the table under `### heading`; a row may document
    several keys (`a`, `b` | 32, 16)."""
    section = DOC.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]
    found = []
    pattern = r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \|\s*([^|]*?)\s*\|"
    for keys, cell in re.findall(pattern, section, re.M):
        names = re.findall(r"`([a-z_]+)`", keys)
        defaults = cell.split(", ") if len(names) > 1 else [cell]
        if len(defaults) != len(names):
            defaults = [cell] * len(names)
        found += list(zip(names, defaults, strict=True))
    return found


def test_every_key_is_documented() -> None:
    """Each table's keys appear in its reference ([gateway]'s in gateway.md)."""
    for heading, model in TABLES.items():
        documented = {key for key, _ in rows(heading)}
        keys = set(model.model_fields) - {"name"}  # `name` is the table's own key
        assert keys <= documented, (heading, sorted(keys - documented))
    for key in GatewayConfig.model_fields:
        assert f"`{key}`" in GATEWAY_DOC, key
        assert f"`{key}`" in DOC, key


def test_every_stated_default_is_the_codes() -> None:
    """A literal default in the doc equals the field's; no row names a key that is not
    there."""
    for heading, model in TABLES.items():
        for key, cell in rows(heading):
            assert key in model.model_fields, (heading, key)
            written = cell.strip().strip("`").lower()
            if key in DERIVED or not written:  # worked out by the code, or not stated
                continue
            expected = {w.lower() for w in as_written(default_of(model, key), key)}
            assert written in expected, (heading, key, cell, expected)
