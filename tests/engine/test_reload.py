"""Reloading the config: what applies now, what waits, what is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modeld.core.errors import ConfigError, UnknownModel
from modeld.core.states import State
from tests.support import SupervisorFactory, eventually, make_config, state_of

MODELS: dict[str, dict[str, Any]] = {
    "alpha": {"gpu_memory_gb": 10, "description": "first"},
    "beta": {"gpu_memory_gb": 10},
}


def toml(config_models: dict[str, Any], path: Path, extra: str = "") -> None:
    """Write a process-runtime config for the given models."""
    lines = [extra, "[gpu]", 'backend = "simulated"', "devices_gb = [60]", "release_delay_s = 0.0"]
    for name, model in config_models.items():
        lines.append(f'[models."{name}"]')
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in model.items()]
    path.write_text("\n".join(lines) + "\n")


async def started(supervised: SupervisorFactory, tmp_path: Path) -> Any:
    """A supervisor whose config file the test can rewrite."""
    config = make_config(MODELS, [60])
    path = tmp_path / "modeld.toml"
    supervisor, runtime, _ = await supervised(config, path)
    tables = {
        name: m.model_dump(
            include={
                "runtime",
                "command",
                "endpoint",
                "gpu_memory_gb",
                "description",
                "load_timeout_s",
            }
        )
        for name, m in config.models.items()
    }
    return supervisor, runtime, path, tables


async def test_reload_adds_changes_and_removes(
    supervised: SupervisorFactory, tmp_path: Path
) -> None:
    """Added models appear; a running model keeps its config until its next start; a
    running model removed from the config runs on, unmanaged, until stopped."""
    supervisor, _, path, tables = await started(supervised, tmp_path)
    await supervisor.models.switch("alpha")
    await supervisor.models.switch("beta")
    tables["alpha"]["description"] = "second"
    gamma = dict(tables["beta"], endpoint="http://127.0.0.1:9")
    toml({"alpha": tables["alpha"], "gamma": gamma}, path)

    outcome = await supervisor.reload()
    assert outcome.added == ["gamma"]
    assert outcome.unmanaged == ["beta"]
    assert outcome.changed_at_next_start == ["alpha"]
    status = supervisor.view.status()["models"]
    assert status["alpha"]["description"] == "first"
    assert status["alpha"]["config_pending"] is True
    assert status["beta"]["unmanaged"] is True
    assert status["gamma"]["status"] == "stopped"
    with pytest.raises(UnknownModel, match="unmanaged"):
        await supervisor.models.switch("beta")
    assert [m["name"] for m in supervisor.view.models()] == ["alpha", "gamma"]

    await supervisor.models.stop("beta")
    assert "beta" not in supervisor.view.status()["models"]
    await supervisor.models.restart("alpha")
    assert supervisor.view.status()["models"]["alpha"]["description"] == "second"
    assert state_of(supervisor, "alpha") is State.RUNNING


async def test_invalid_config_is_rejected_and_old_stays(
    supervised: SupervisorFactory, tmp_path: Path
) -> None:
    """A bad file is refused with the field named; nothing changes."""
    supervisor, _, path, tables = await started(supervised, tmp_path)
    tables["alpha"]["gpu_memory_gb"] = -3
    toml(tables, path)
    with pytest.raises(ConfigError, match=r"models\.alpha\.gpu_memory_gb"):
        await supervisor.reload()
    assert supervisor.view.status()["models"]["alpha"]["gpu_memory_required_gb"] == 10.0


async def test_settings_bound_at_start_wait_for_a_restart(
    supervised: SupervisorFactory, tmp_path: Path
) -> None:
    """Socket and GPU changes are reported, not applied; other daemon settings apply."""
    supervisor, _, path, tables = await started(supervised, tmp_path)
    toml(tables, path, '[daemon]\nsocket = "/tmp/elsewhere.sock"\neviction_policy = "lru"')
    outcome = await supervisor.reload()
    assert outcome.requires_restart == ["daemon.socket", "daemon.state_dir"]
    assert supervisor.view.status()["eviction_policy"] == "lru"


async def test_new_model_on_missing_device_is_refused(
    supervised: SupervisorFactory, tmp_path: Path
) -> None:
    """A model on a GPU this host lacks is refused at reload, naming the field."""
    supervisor, _, path, tables = await started(supervised, tmp_path)
    toml({**tables, "far": dict(tables["alpha"], gpus=[3])}, path)
    with pytest.raises(ConfigError, match=r"models\.far\.gpus"):
        await supervisor.reload()
    assert "far" not in supervisor.view.status()["models"]


async def test_a_switch_queued_behind_a_reload_that_removes_its_model_starts_nothing(
    supervised: SupervisorFactory, tmp_path: Path
) -> None:
    """A switch that waited its turn behind a reload removing its model is refused as
    unknown, and no backend outside the config (a ghost in no status) is started."""
    models = {name: {"gpu_memory_gb": 30} for name in ("alpha", "beta", "gamma", "delta")}
    # Memory comes back a while after a stop: the switch that stops holds the lock meanwhile.
    config = make_config(models, [60], gpu={"release_delay_s": 0.5})
    path = tmp_path / "modeld.toml"
    supervisor, runtime, _ = await supervised(config, path)
    await supervisor.models.switch("alpha")
    await supervisor.models.switch("beta")
    events = supervisor.events.subscribe()
    holding = asyncio.create_task(supervisor.models.switch("gamma"))
    async with asyncio.timeout(5):
        while (await events.next())["type"] != "switch.stopped":
            pass  # now it waits, under the lock, for the stopped model's memory
    keep = {
        name: m.model_dump(include={"runtime", "command", "endpoint", "gpu_memory_gb"})
        for name, m in config.models.items()
        if name != "delta"
    }
    toml(keep, path)
    reloading = asyncio.create_task(supervisor.reload())

    async def reload_waits_its_turn() -> bool:
        return bool(supervisor.view.status()["in_flight"] >= 2)

    await eventually(reload_waits_its_turn, timeout=5)
    switching = asyncio.create_task(supervisor.models.switch("delta"))
    assert (await reloading).removed == ["delta"]
    with pytest.raises(UnknownModel, match="delta"):
        await switching
    await holding
    assert runtime.starts("delta") == 0
    assert "delta" not in supervisor.view.status()["models"]
