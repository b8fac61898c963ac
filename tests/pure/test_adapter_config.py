"""Adapters in the config: an adapter is a model that runs in its base (its endpoint,
runtime and GPUs are the base's); a base knows its adapters and gets vLLM's runtime
LoRA setting; a table that cannot work is refused, naming the model and the key."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from modeld.core.config import Config, parse_config
from modeld.core.errors import ConfigError
from modeld.core.lora import LoraSettings, lora_settings
from tests.pure.test_config import check_config

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


def write_adapter(path: Path, rank: int, trained_on: str) -> Path:
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "base_model_name_or_path": trained_on}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def test_check_config_refuses_adapters_that_would_not_load(tmp_path: Path) -> None:
    """`modeld check-config`: a missing adapter directory and a rank above the base's
    --max-lora-rank are refused (exit 78), naming the model; an adapter trained on
    another model is a warning; a good one is listed as its base's adapter."""
    good = write_adapter(tmp_path / "sql", 8, "Qwen/Qwen2.5-7B-Instruct")
    wide = write_adapter(tmp_path / "wide", 64, "Qwen/Qwen2.5-7B-Instruct")
    other = write_adapter(tmp_path / "llama", 8, "meta-llama/Llama-3.1-8B")
    command = json.dumps([*BASE, "--max-lora-rank", "16"])
    text = (
        '[gpu]\nbackend = "simulated"\ndevices_gb = [80]\n'
        f'[models.qwen]\nruntime = "process"\ncommand = {command}\ngpu_memory_gb = 40\n'
        f'[models.sql]\nbase = "qwen"\nadapter = "{good}"\n'
        f'[models.odd]\nbase = "qwen"\nadapter = "{other}"\n'
    )
    path = tmp_path / "ok.toml"
    path.write_text(text.replace('command = ["vllm"', f'command = ["{sys.executable}"'))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert f"model sql: LoRA adapter of qwen ({good})" in result.stdout
    assert "warning: models.odd: its adapter_config.json says it was trained on" in result.stdout
    assert "models.sql:" not in result.stdout.replace("model sql:", "")
    broken = text + (
        f'[models.gone]\nbase = "qwen"\nadapter = "{tmp_path / "nowhere"}"\n'
        f'[models.wide]\nbase = "qwen"\nadapter = "{wide}"\n'
    )
    path.write_text(broken.replace('command = ["vllm"', f'command = ["{sys.executable}"'))
    result = check_config(path)
    assert result.returncode == 78
    assert (
        "models.gone.adapter:" in result.stderr and "holds no adapter_config.json" in result.stderr
    )
    assert "models.wide.adapter: its rank (64) is above qwen's --max-lora-rank (16)" in (
        result.stderr
    )
    assert "models.sql" not in result.stderr


def test_an_adapters_estimate_and_deadline_are_an_adapters() -> None:
    """An adapter loads in a fraction of a second: its estimate until measured is 1 s and
    its load may take 60 s (not a model's 60 s and 900 s); either may be set."""
    loaded = config(
        {
            "qwen": qwen(),
            "sql": {"base": "qwen", "adapter": "/srv/sql"},
            "slow": {"base": "qwen", "adapter": "/srv/slow", "load_timeout_s": 300},
        }
    )
    sql, slow = loaded.models["sql"], loaded.models["slow"]
    assert (sql.load_time_seconds, sql.load_timeout_s) == (1.0, 60.0)
    assert slow.load_timeout_s == 300
    assert loaded.models["qwen"].load_time_seconds == 60.0
