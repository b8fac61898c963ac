"""Checks of a valid config against this host and good practice: the devices its
models name, and what is valid but risky (said at start and by check-config)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from modeld.core.addresses import is_loopback, split_host_port
from modeld.core.config import Config, ModelConfig, missing_device
from modeld.core.errors import ConfigError
from modeld.core.memory import model_need
from modeld.core.planner import EPSILON_GB


def config_warnings(config: Config) -> list[str]:
    """What is valid but risky in a config: an operator should hear of it at start."""
    warnings = []
    for name, model in config.models.items():
        host = urlsplit(model.endpoint).hostname or ""
        if model.sleep_mode and model.socket_path is None and is_loopback(host):
            warnings.append(
                f"models.{name}: sleep_mode serves vLLM's unauthenticated admin endpoints "
                f"(/sleep, /collective_rpc) on {model.endpoint}, which every local user can "
                'reach: prefer endpoint = "unix:/run/modeld/backends/NAME.sock" (vLLM --uds)'
            )
        if model.sleep_mode and model.socket_path is None and not is_loopback(host):
            warnings.append(
                f"models.{name}: sleep_mode runs vLLM with VLLM_SERVER_DEV_MODE=1, which serves "
                f"unauthenticated admin endpoints, and its endpoint {model.endpoint} is not on "
                "loopback: keep the backend reachable only from this host"
            )
        for spec in model.ports:
            parts = spec.split(":")
            if len(parts) == 3 and not is_loopback(parts[0].strip("[]")):
                warnings.append(
                    f"models.{name}.ports: {spec!r} publishes the backend on {parts[0]}, "
                    "beyond loopback: anyone who reaches it can use the model without modeld"
                )
    gateway = config.gateway
    host = split_host_port(gateway.listen)[0]
    keyed = (
        gateway.api_keys
        or gateway.api_keys_file
        or gateway.inference_keys
        or gateway.inference_keys_file
    )
    if not is_loopback(host) and not keyed:
        warnings.append(
            f"gateway.listen: {gateway.listen} is beyond loopback and no api_keys are set: "
            "anyone who reaches it can load, switch and stop models"
        )
    return warnings


def check_devices(models: Mapping[str, ModelConfig], present: set[int]) -> None:
    """ConfigError (naming the field) when a model names a device this host lacks."""
    if missing := missing_device(models, present):
        raise ConfigError(
            f"{missing} (this host has {len(present)})", fields=[missing.split(":")[0]]
        )


def never_fits(models: Mapping[str, ModelConfig], totals: Mapping[int, float]) -> list[str]:
    """Each model whose configured need exceeds one of its GPUs' whole memory: it could
    never run here, even alone. One line per model, naming the numbers."""
    problems = []
    for name, model in models.items():
        need = model_need(model, totals)
        for device, gb in need.per_device.items():
            total = totals.get(device)
            if total is not None and gb > total + EPSILON_GB:
                problems.append(
                    f"models.{name}: needs {gb:.1f} GB on GPU {device}, which has "
                    f"{total:.1f} GB: it can never fit, even alone ({need.source.value} need)"
                )
                break
    return problems


def check_fits(models: Mapping[str, ModelConfig], totals: Mapping[int, float]) -> None:
    """ConfigError (naming each model and its numbers) when a model can never fit."""
    if problems := never_fits(models, totals):
        raise ConfigError(
            "; ".join(problems), fields=[problem.split(":")[0] for problem in problems]
        )
