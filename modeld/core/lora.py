"""LoRA adapters as models: what an adapter's table may say, and what a base's command
tells vLLM about adapters (pure: the config's checks and the engine's capacity read it).

An adapter (`base = "NAME"`, `adapter = DIR or HF id`) runs in its base's backend: it
has no runtime, command, GPUs or memory of its own, and vLLM serves it under its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# What an adapter's table may set; anything else belongs to its base.
ADAPTER_KEYS = frozenset(
    {"base", "adapter", "description", "aliases", "load_timeout_s", "load_time_seconds"}
)
# An adapter's load is a fraction of a second, not a model's minutes: its estimate until
# measured, and how long its load may take before it fails.
ADAPTER_DEFAULTS = {"load_time_seconds": 1.0, "load_timeout_s": 60.0}
ENABLE_LORA = "--enable-lora"
# vLLM's settings for runtime loading (/v1/load_lora_adapter): added to a base that has
# adapters, as sleep mode's are to a model that parks.
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
# vLLM 0.32's defaults (vllm/config/lora.py).
DEFAULT_MAX_LORAS = 1
DEFAULT_MAX_LORA_RANK = 16


@dataclass(frozen=True)
class LoraSettings:
    """What a base's command tells vLLM about adapters."""

    enabled: bool
    # Adapters in one batch (--max-loras), and held at once in vLLM's CPU-side cache
    # (--max-cpu-loras, at least max_loras): how many modeld keeps loaded.
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int

    @property
    def capacity(self) -> int:
        """How many adapters may be loaded in the base at once."""
        return max(self.max_loras, self.max_cpu_loras)


def lora_settings(command: Sequence[str]) -> LoraSettings:
    """The LoRA flags of a vLLM command line (`--flag N` or `--flag=N`), vLLM's defaults
    where absent or unreadable."""
    values: dict[str, str] = {}
    enabled = False
    for i, arg in enumerate(command):
        flag, eq, value = arg.partition("=")
        if flag == ENABLE_LORA:
            enabled = value.lower() not in ("false", "0") if eq else True
        elif flag in ("--max-loras", "--max-cpu-loras", "--max-lora-rank"):
            values[flag] = value if eq else (command[i + 1] if i + 1 < len(command) else "")
    max_loras = _number(values.get("--max-loras"), DEFAULT_MAX_LORAS)
    return LoraSettings(
        enabled=enabled,
        max_loras=max_loras,
        max_cpu_loras=_number(values.get("--max-cpu-loras"), max_loras),
        max_lora_rank=_number(values.get("--max-lora-rank"), DEFAULT_MAX_LORA_RANK),
    )


def _number(text: str | None, default: int) -> int:
    try:
        value = int(text) if text is not None else default
    except ValueError:
        return default
    return value if value > 0 else default


def adapter_table_problems(name: str, table: Mapping[str, object]) -> list[str]:
    """What an adapter's table says that only a base may: one sentence per key."""
    base = table.get("base")
    return [
        f"models.{name}.{key}: an adapter runs in its base ({base}): it has no {key} of "
        "its own (set it on the base)"
        for key in table
        if key not in ADAPTER_KEYS
    ]


def base_problems(name: str, base: str, tables: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Why `base` cannot carry adapter `name`: not a model, itself an adapter, or a
    command that does not enable LoRA."""
    table = tables.get(base)
    if table is None:
        return [f"models.{name}.base: {base!r} is not a configured model"]
    if "base" in table:
        return [f"models.{name}.base: {base!r} is itself an adapter (adapters need a model)"]
    command = table.get("command")
    args = [str(a) for a in command] if isinstance(command, list) else []
    if not lora_settings(args).enabled:
        return [
            f"models.{name}.base: {base}'s command does not pass {ENABLE_LORA}: vLLM would "
            "refuse its adapters (add --enable-lora, and --max-loras and --max-lora-rank "
            "to size it)"
        ]
    return []


def check_adapter_tables(tables: Mapping[str, Mapping[str, object]]) -> None:
    """Refuse (ValueError naming the model and key) an adapter table that sets what only a
    base may, names a base that cannot carry it, or any table that writes `adapters`."""
    for name, table in tables.items():
        if "adapters" in table:
            raise ValueError(
                f"models.{name}.adapters: filled by modeld from the adapters that name "
                f"{name} as their base; declare each adapter as its own model"
            )
        base = table.get("base")
        if base is None:
            continue
        if not isinstance(base, str):
            raise ValueError(f"models.{name}.base: must be a model's name")
        found = adapter_table_problems(name, table) + base_problems(name, base, tables)
        if found:
            raise ValueError(found[0])


def with_adapters(models: Mapping[str, object]) -> dict[str, object]:
    """The model tables with each adapter given its base's endpoint, runtime and GPUs
    (where vLLM serves it), and each base the names of its adapters."""
    bases: dict[str, list[str]] = {}
    for name, table in models.items():
        if isinstance(table, Mapping) and isinstance(base := table.get("base"), str):
            bases.setdefault(base, []).append(name)
    out: dict[str, object] = {}
    for name, table in models.items():
        if not isinstance(table, Mapping):
            out[name] = table
        elif isinstance(base := table.get("base"), str):
            carrier = models.get(base)
            given = carrier if isinstance(carrier, Mapping) else {}
            inherited = {k: given[k] for k in ("endpoint", "runtime", "gpus") if k in given}
            out[name] = {**ADAPTER_DEFAULTS, **table, **inherited, "name": name}
        elif name in bases:
            out[name] = {**table, "adapters": bases[name]}
        else:
            out[name] = table
    return out


def weights_of(command: Sequence[str], hf_path: str | None) -> list[str]:
    """What a base's command loads (`--model X` or `vllm serve X`) and its hf_path."""
    found = [hf_path] if hf_path else []
    for i, arg in enumerate(command[:-1]):
        if arg in ("--model", "serve") and not command[i + 1].startswith("-"):
            found.append(command[i + 1])
        elif arg.startswith("--model="):
            found.append(arg.split("=", 1)[1])
    if command and command[-1].startswith("--model="):
        found.append(command[-1].split("=", 1)[1])
    return found


def looks_like(adapter_base: str, weights: Sequence[str]) -> bool:
    """Whether an adapter trained on `adapter_base` (adapter_config.json's
    base_model_name_or_path) looks made for a base loading `weights`: the last part of
    a path or repo id matches, ignoring case (unknown weights: yes)."""
    if not weights:
        return True
    name = adapter_base.rstrip("/").rsplit("/", 1)[-1].lower()
    return any(w.rstrip("/").rsplit("/", 1)[-1].lower() == name for w in weights)
