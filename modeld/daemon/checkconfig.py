"""`modeld check-config`: what the daemon would do with a config, without starting
anything (like `nginx -t`), and `modeld config-schema`: the config's JSON Schema, for
editors that validate TOML with one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping

from modeld.adapters.store import Learned, learned_peak
from modeld.core.backend_keys import read_backend_key
from modeld.core.config import Config
from modeld.core.config_checks import config_warnings
from modeld.core.errors import ConfigError
from modeld.core.gateway_config import GatewayConfig
from modeld.core.gateway_keys import read_keys
from modeld.core.memory import model_need
from modeld.daemon.checkadapters import adapter_problems, adapter_warnings


def explain(config: Config, totals: Mapping[int, float] | None, learned: Learned) -> list[str]:
    """Plain lines: each model's runtime, need per device and its source, whether it fits
    alone on its devices; parking; warnings. `totals`: device sizes in GB, when known
    (the simulated GPU's, or NVML's on a GPU host)."""
    known = dict(totals or {})
    lines = [f"gpu: {config.gpu.backend}, " + _devices(known)]
    for name, model in config.models.items():
        if model.base:
            lines.append(f"model {name}: LoRA adapter of {model.base} ({model.adapter})")
            continue
        need = model_need(model, known, learned_peak(learned.models.get(name), model))
        where = model.container_name if model.runtime == "docker" else " ".join(model.command or [])
        per_device = ", ".join(
            f"GPU {d}: {gb:.1f} GB"
            if d in known or model.gpu_memory_utilization is None
            else f"GPU {d}: {model.gpu_memory_utilization:.0%} of its total"
            for d, gb in need.per_device.items()
        )
        fits = [gb <= known[d] for d, gb in need.per_device.items() if d in known]
        verdict = (
            "fits alone"
            if fits and all(fits)
            else "does NOT fit even alone"
            if fits
            else "fit unknown (device sizes unknown here)"
        )
        flags = [f for f, on in (("pinned", model.pinned), ("sleep mode", model.sleep_mode)) if on]
        if model.api_key_file is not None:
            flags.append(f"backend key in {model.api_key_file}")
        lines.append(
            f"model {name}: {model.runtime} ({where}); needs {per_device} "
            f"[{need.source.value}]; {verdict}" + (f"; {', '.join(flags)}" if flags else "")
        )
    pinned = [n for n, m in config.models.items() if m.pinned]
    if pinned and known:
        held = {d: 0.0 for d in known}
        for name in pinned:
            model = config.models[name]
            for d, gb in model_need(model, known).per_device.items():
                held[d] = held.get(d, 0.0) + gb
        largest = max(
            (model_need(m, known).total_gb for n, m in config.models.items() if not m.pinned),
            default=0.0,
        )
        room = sum(known.values()) - sum(held.values())
        if largest > room:
            lines.append(
                f"warning: the pinned models ({', '.join(pinned)}) leave {room:.1f} GB, "
                f"less than the largest other model needs ({largest:.1f} GB)"
            )
    budget = config.daemon.park_ram_gb
    lines.append(f"parking: {'off' if not budget else f'up to {budget:g} GB of host RAM'}")
    gateway = config.gateway
    lines.append(f"gateway (modeld-gateway): listens on {gateway.listen}; " + _keys(gateway))
    lines += [f"warning: {w}" for w in config_warnings(config) + adapter_warnings(config)]
    for name, model in config.models.items():
        unsized = model.gpu_memory_gb is None and model.gpu_memory_utilization is None
        if unsized and model.size_gb == 0 and not model.base:  # an adapter's is its base's
            lines.append(
                f"warning: models.{name}: no memory figure (gpu_memory_gb, "
                "gpu_memory_utilization or size_gb): modeld assumes it needs 0.0 GB, so it "
                "may start it beside models it cannot fit with until a first load measures "
                "it (vLLM itself takes 90% of each device by default)"
            )
    for model in config.models.values():
        try:
            read_backend_key(model)
        except ConfigError as exc:
            # Read as whoever runs check-config: the daemon and the gateway must be able to.
            lines.append(f"warning: {exc.message.removeprefix('<config>: ')}")
    return lines


def problems(config: Config, source: str = "<config>") -> list[str]:
    """What is valid TOML but would fail once run, one sentence each: a gateway key file
    missing, empty or holding a key cut short (the gateway would not start), a process
    backend's program that is not there (its start would fail)."""
    found = []
    try:
        read_keys(config.gateway, source)
    except ConfigError as exc:
        # Unreadable for whoever runs check-config is not unreadable for the gateway.
        if "Permission denied" not in exc.message:
            found.append(exc.message)
    found += adapter_problems(config, source)
    for name, model in config.models.items():
        if model.base or model.runtime != "process" or not model.command:
            continue
        program = model.command[0]
        if "/" in program:
            there = os.access(program, os.X_OK) and not os.path.isdir(program)
        else:
            there = shutil.which(program) is not None
        if not there:
            found.append(
                f"{source}: models.{name}.command: {program!r} is not "
                + ("an executable file" if "/" in program else "found on PATH")
                + ": its start would fail (give the program's full path)"
            )
    return found


def _keys(gateway: GatewayConfig) -> str:
    """The gateway's keys in words: how many of each role, and the budget."""
    parts = []
    for role, inline, file in (
        ("admin", gateway.api_keys, gateway.api_keys_file),
        ("inference", gateway.inference_keys, gateway.inference_keys_file),
    ):
        if inline or file:
            parts.append(
                f"{role} keys: {len(inline)} inline" + (f" and those in {file}" if file else "")
            )
    if not parts:
        return "no API keys (every caller is an admin: keep it on loopback)"
    budget = gateway.key_loads_per_minute
    limit = f"{budget} loads a minute per inference key" if budget else "no load budget"
    return "; ".join(parts) + f"; {limit}"


def _devices(totals: Mapping[int, float]) -> str:
    if not totals:
        return "device sizes unknown here (run on the GPU host)"
    return ", ".join(f"GPU {d} {gb:g} GB" for d, gb in sorted(totals.items()))


def schema() -> str:
    """The configuration's JSON Schema, generated from the pydantic models."""
    return json.dumps(Config.model_json_schema(), indent=2, sort_keys=True) + "\n"
