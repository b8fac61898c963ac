"""Reloading the config: what applies now, what waits, what is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modeld.core.errors import ConfigError, LoadFailed, UnknownModel
from modeld.core.states import State
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour, FakeRuntime
from tests.support import EngineFactory, eventually, make_config, state_of

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


async def started(
    engines: EngineFactory, tmp_path: Path
) -> tuple[Engine, FakeRuntime, Path, dict[str, dict[str, Any]]]:
    """An Engine whose config file the test can rewrite."""
    config = make_config(MODELS, [60])
    path = tmp_path / "modeld.toml"
    engine, runtime, _ = await engines(config, path)
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
    return engine, runtime, path, tables


async def test_reload_adds_changes_and_removes(engines: EngineFactory, tmp_path: Path) -> None:
    """Added models appear; a running model keeps its config until its next start; a
    running model removed from the config runs on, unmanaged, until stopped."""
    engine, _, path, tables = await started(engines, tmp_path)
    await engine.models.switch("alpha")
    await engine.models.switch("beta")
    tables["alpha"]["description"] = "second"
    gamma = dict(tables["beta"], endpoint="http://127.0.0.1:9")
    toml({"alpha": tables["alpha"], "gamma": gamma}, path)

    outcome = await engine.reload()
    assert outcome.added == ["gamma"]
    assert outcome.unmanaged == ["beta"]
    assert outcome.changed_at_next_start == ["alpha"]
    status = engine.view.status().models
    assert status["alpha"].description == "first"
    assert status["alpha"].config_pending is True
    assert status["beta"].unmanaged is True
    assert status["gamma"].status == "stopped"
    with pytest.raises(UnknownModel, match="unmanaged"):
        await engine.models.switch("beta")
    assert [m.name for m in engine.view.models()] == ["alpha", "gamma"]

    await engine.models.stop("beta")
    assert "beta" not in engine.view.status().models
    await engine.models.restart("alpha")
    assert engine.view.status().models["alpha"].description == "second"
    assert state_of(engine, "alpha") is State.RUNNING


async def test_a_failed_model_changed_by_a_reload_takes_it_now(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """A model whose load failed runs nothing: a reload that changes it applies the change
    now (not "changed while running", at a next start), and its next start uses it."""
    engine, runtime, path, tables = await started(engines, tmp_path)
    runtime.behaviour["alpha"] = Behaviour(exit_code=1)
    with pytest.raises(LoadFailed):
        await engine.models.switch("alpha")
    assert state_of(engine, "alpha") is State.FAILED
    tables["alpha"]["description"] = "second"
    toml(tables, path)
    outcome = await engine.reload()
    assert "alpha" in outcome.changed and "alpha" not in outcome.changed_at_next_start
    status = engine.view.status().models["alpha"]
    assert status.description == "second" and status.config_pending is False


async def test_invalid_config_is_rejected_and_old_stays(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """A bad file is refused with the field named; nothing changes."""
    engine, _, path, tables = await started(engines, tmp_path)
    tables["alpha"]["gpu_memory_gb"] = -3
    toml(tables, path)
    with pytest.raises(ConfigError, match=r"models\.alpha\.gpu_memory_gb"):
        await engine.reload()
    assert engine.view.status().models["alpha"].gpu_memory_required_gb == 10.0


async def test_settings_bound_at_start_wait_for_a_restart(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """Socket and GPU changes are reported, not applied; other daemon settings apply."""
    engine, _, path, tables = await started(engines, tmp_path)
    toml(tables, path, '[daemon]\nsocket = "/tmp/elsewhere.sock"\neviction_policy = "lru"')
    outcome = await engine.reload()
    assert outcome.requires_restart == ["daemon.socket", "daemon.state_dir"]
    assert engine.view.status().eviction_policy == "lru"


async def test_new_model_on_missing_device_is_refused(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """A model on a GPU this host lacks is refused at reload, naming the field."""
    engine, _, path, tables = await started(engines, tmp_path)
    toml({**tables, "far": dict(tables["alpha"], gpus=[3])}, path)
    with pytest.raises(ConfigError, match=r"models\.far\.gpus"):
        await engine.reload()
    assert "far" not in engine.view.status().models


async def test_new_model_that_can_never_fit_is_refused(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """A model needing more than its GPU has, even alone, is refused at reload, naming
    the model and the numbers; nothing changes."""
    engine, _, path, tables = await started(engines, tmp_path)
    toml({**tables, "vast": dict(tables["alpha"], gpu_memory_gb=61)}, path)
    with pytest.raises(
        ConfigError, match=r"models\.vast: needs 61\.0 GB on GPU 0, which has 60\.0"
    ):
        await engine.reload()
    assert "vast" not in engine.view.status().models


async def test_a_switch_queued_behind_a_reload_that_removes_its_model_starts_nothing(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """A switch that waited its turn behind a reload removing its model is refused as
    unknown, and no backend outside the config (a ghost in no status) is started."""
    models = {name: {"gpu_memory_gb": 30} for name in ("alpha", "beta", "gamma", "delta")}
    # Memory comes back a while after a stop: the switch that stops holds the lock meanwhile.
    config = make_config(models, [60], gpu={"release_delay_s": 0.5})
    path = tmp_path / "modeld.toml"
    engine, runtime, _ = await engines(config, path)
    await engine.models.switch("alpha")
    await engine.models.switch("beta")
    events = engine.events.subscribe()
    holding = asyncio.create_task(engine.models.switch("gamma"))
    async with asyncio.timeout(5):
        while (await events.next()).type != "switch.stopped":
            pass  # now it waits, under the lock, for the stopped model's memory
    keep = {
        name: m.model_dump(include={"runtime", "command", "endpoint", "gpu_memory_gb"})
        for name, m in config.models.items()
        if name != "delta"
    }
    toml(keep, path)
    reloading = asyncio.create_task(engine.reload())

    async def reload_waits_its_turn() -> bool:
        return bool(engine.view.status().in_flight >= 2)

    await eventually(reload_waits_its_turn, timeout=5)
    switching = asyncio.create_task(engine.models.switch("delta"))
    assert (await reloading).removed == ["delta"]
    with pytest.raises(UnknownModel, match="delta"):
        await switching
    await holding
    assert runtime.starts("delta") == 0
    assert "delta" not in engine.view.status().models
