"""What `modeld check-config` says of adapters: their files must be there (a directory
in PEFT's layout, or a Hugging Face repo id in the cache), their rank within the base's
`--max-lora-rank`; and a warning when an adapter looks made for another base model."""

from __future__ import annotations

from collections.abc import Iterator

from modeld.adapters.hfcache import AdapterFacts, adapter_dir, adapter_facts, hf_cache_dir
from modeld.core.config import Config, ModelConfig
from modeld.core.lora import looks_like, lora_settings, weights_of


def _adapters(config: Config) -> Iterator[tuple[str, ModelConfig, AdapterFacts | None]]:
    """Each adapter, and its rank and base model as its files say (None: no files)."""
    cache = hf_cache_dir(config.daemon.hf_cache_dir)
    for name, model in config.models.items():
        if model.base is None or model.adapter is None:
            continue
        where = adapter_dir(cache, model.adapter)
        yield name, model, adapter_facts(where) if where is not None else None


def adapter_problems(config: Config, source: str = "<config>") -> list[str]:
    """One sentence per adapter that would fail to load: no adapter at its path, or a
    rank past its base's --max-lora-rank."""
    found = []
    cache = hf_cache_dir(config.daemon.hf_cache_dir)
    for name, model, facts in _adapters(config):
        if facts is None:
            found.append(
                f"{source}: models.{name}.adapter: {model.adapter!r} holds no "
                "adapter_config.json (a directory in PEFT's layout, or a Hugging Face repo "
                f"id in the cache at {cache}): its load would fail"
            )
            continue
        rank, _ = facts
        base = config.models[model.base or ""]
        limit = lora_settings(base.command or []).max_lora_rank
        if rank is not None and rank > limit:
            found.append(
                f"{source}: models.{name}.adapter: its rank ({rank}) is above "
                f"{model.base}'s --max-lora-rank ({limit}): vLLM would refuse it"
            )
    return found


def adapter_warnings(config: Config) -> list[str]:
    """Adapters whose adapter_config.json names a base model unlike their base's."""
    warnings = []
    for name, model, facts in _adapters(config):
        trained_on = facts[1] if facts is not None else None
        base = config.models[model.base or ""]
        weights = weights_of(base.command or [], base.hf_path)
        if trained_on and not looks_like(trained_on, weights):
            warnings.append(
                f"models.{name}: its adapter_config.json says it was trained on "
                f"{trained_on!r}, but {model.base} loads {weights[0]!r}: its answers may be "
                "nonsense"
            )
    return warnings
