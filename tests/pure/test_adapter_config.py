"""Adapters in the config: an adapter is a model that runs in its base (its endpoint,
runtime and GPUs are the base's); a base knows its adapters and gets vLLM's runtime
LoRA setting; a table that cannot work is refused, naming the model and the key."""

from __future__ import annotations

from typing import Any

import pytest

from modeld.core.config import Config, parse_config
from modeld.core.errors import ConfigError
from modeld.core.lora import LoraSettings, lora_settings

BASE = ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--uds", "{socket}", "--enable-lora"]


def config(models: dict[str, dict[str, Any]]) -> Config:
    return parse_config({"gpu": {"backend": "simulated", "devices_gb": [80, 80]}, "models": models})


def refused(models: dict[str, dict[str, Any]]) -> str:
    with pytest.raises(ConfigError) as caught:
        config(models)
    return caught.value.message


def qwen(**more: Any) -> dict[str, Any]:
    return {"runtime": "process", "command": BASE, "gpus": [1], **more}


def test_an_adapter_runs_where_its_base_runs() -> None:
    """The adapter takes its base's endpoint, runtime and GPUs; the base lists it and
    starts with VLLM_ALLOW_RUNTIME_LORA_UPDATING; a model with no adapters does not."""
    loaded = config(
        {
            "qwen": qwen(),
            "qwen-sql": {"base": "qwen", "adapter": "/srv/adapters/sql", "aliases": ["sql"]},
            "other": {"runtime": "process", "command": ["vllm", "serve", "x"]},
        }
    )
    base, sql = loaded.models["qwen"], loaded.models["qwen-sql"]
    assert (sql.base, sql.adapter) == ("qwen", "/srv/adapters/sql")
    assert (sql.endpoint, sql.runtime, sql.gpus) == (base.endpoint, "process", [1])
    assert base.adapters == ["qwen-sql"] and loaded.canonical("sql") == "qwen-sql"
    assert base.launch_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in loaded.models["other"].launch_env


@pytest.mark.parametrize(
    ("adapter", "said"),
    [
        ({"command": ["vllm"]}, "models.sql.command: an adapter runs in its base (qwen)"),
        ({"gpu_memory_gb": 4}, "models.sql.gpu_memory_gb: an adapter runs in its base"),
        ({"runtime": "docker"}, "models.sql.runtime: an adapter runs in its base"),
        ({"sleep_mode": True}, "models.sql.sleep_mode: an adapter runs in its base"),
        ({"base": "nope"}, "models.sql.base: 'nope' is not a configured model"),
        ({"base": "plain"}, "plain's command does not pass --enable-lora"),
        ({"base": "sql"}, "models.sql.base: 'sql' is itself an adapter"),
    ],
)
def test_an_adapter_that_cannot_work_is_refused(adapter: dict[str, Any], said: str) -> None:
    """Each refusal names the model and the key (the base may not be another adapter,
    a name that is no model, or a model whose command does not enable LoRA)."""
    models = {
        "qwen": qwen(),
        "plain": {"runtime": "process", "command": ["vllm", "serve", "x"]},
        "sql": {"base": "qwen", "adapter": "/srv/sql", **adapter},
    }
    assert said in refused(models)


def test_half_an_adapter_and_a_written_adapter_list_are_refused() -> None:
    assert "needs both `base`" in refused({"qwen": qwen(adapter="/srv/sql")})
    assert "models.qwen.adapters: filled by modeld" in refused({"qwen": qwen(adapters=["x"])})


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        (["vllm", "serve", "m"], LoraSettings(False, 1, 1, 16)),
        (["vllm", "--enable-lora"], LoraSettings(True, 1, 1, 16)),
        (["vllm", "--enable-lora", "--max-loras", "4"], LoraSettings(True, 4, 4, 16)),
        (["--enable-lora", "--max-loras=2", "--max-cpu-loras=8"], LoraSettings(True, 2, 8, 16)),
        (["--enable-lora", "--max-lora-rank", "64"], LoraSettings(True, 1, 1, 64)),
        (["--enable-lora", "--max-loras", "many", "--max-lora-rank"], LoraSettings(True, 1, 1, 16)),
    ],
)
def test_a_bases_command_says_its_adapter_capacity(
    command: list[str], settings: LoraSettings
) -> None:
    """vLLM's flags, both spellings, vLLM's defaults where absent or unreadable; the
    capacity is the CPU-side cache (at least --max-loras)."""
    assert lora_settings(command) == settings


def test_a_bases_capacity_is_its_cpu_side_cache() -> None:
    """vLLM keeps up to --max-cpu-loras adapters (at least --max-loras) loaded at once."""
    assert lora_settings(["--enable-lora", "--max-loras=2", "--max-cpu-loras=8"]).capacity == 8
    assert lora_settings(["--enable-lora", "--max-loras", "4"]).capacity == 4
