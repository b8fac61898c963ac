"""The model tables as the config's models read them: each named by its key, given the
defaults that depend on the [daemon] table (its vLLM cache and its backend socket), and
adapters joined to their bases (core/lora.py)."""

from __future__ import annotations

from pathlib import Path

from modeld.core.lora import check_adapter_tables, with_adapters


def named_tables(data: dict[str, object], state_dir: Path, socket: Path) -> dict[str, object]:
    """The document with its `models` tables filled in (`state_dir` and `socket`: the
    [daemon] defaults); ValueError for an adapter table that cannot be."""
    daemon = data.get("daemon")
    settings = daemon if isinstance(daemon, dict) else {}
    # A value of the wrong type is reported by the [daemon] table's own check.
    chosen, state = settings.get("cache_dir"), settings.get("state_dir")
    cache = (
        Path(chosen)
        if isinstance(chosen, str | Path)
        else Path(state if isinstance(state, str | Path) else state_dir) / "cache"
    )
    chosen, given = settings.get("backend_socket_dir"), settings.get("socket")
    sockets = (
        Path(chosen)
        if isinstance(chosen, str | Path)
        else Path(given if isinstance(given, str | Path) else socket).parent / "backends"
    )
    models = data.get("models")
    if not isinstance(models, dict):
        return data  # the config's own check says what is wrong with it
    tables = {n: t for n, t in models.items() if isinstance(t, dict)}
    check_adapter_tables(tables)
    filled = {
        name: (
            {
                "vllm_cache_dir": cache / "vllm" / name,
                "endpoint": f"unix:{sockets / (name.replace('/', '_') + '.sock')}",
                **table,
                "name": name,
            }
            if isinstance(table, dict) and "base" not in table
            else table
        )
        for name, table in models.items()
    }
    return {**data, "models": with_adapters(filled)}
