"""Adapters are models: asking for one brings its base up (room made for it as for any
model) and loads the adapter into it; switching between adapters of a running base
never restarts it; the base's capacity is kept (least recently used idle adapter
first, never one serving requests); adapters follow their base down and are adopted
with it. Against the fake vLLM, which serves runtime LoRA as vLLM 0.32 does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modeld.core.config import Config
from modeld.core.errors import LoadFailed, ModelsBusy
from modeld.core.states import State
from modeld.testing.fakes import Behaviour, FakeRuntime
from tests.engine.test_metrics import metered, scrape
from tests.support import EngineFactory, make_config, next_of, start_over, state_of


def adapter_dir(root: Path, name: str, rank: int = 8) -> str:
    path = root / name
    path.mkdir(exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return str(path)


def lora_config(root: Path, max_loras: int = 2, base_sleeps: bool = False, **daemon: Any) -> Config:
    """A base taking `max_loras` adapters (with sleep mode: `base_sleeps`), three
    adapters of it and a broken one, and another model that does not fit beside the base
    (80 GB)."""
    command = ["vllm", "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", "16"]
    models: dict[str, dict[str, Any]] = {
        "base": {"command": command, "gpu_memory_gb": 50, "sleep_mode": base_sleeps},
        "other": {"gpu_memory_gb": 50},
    }
    for name in ("sql", "chat", "math"):
        models[name] = {"base": "base", "adapter": adapter_dir(root, name)}
    models["broken"] = {"base": "base", "adapter": str(root / "nowhere")}
    return make_config(models, [80], **daemon)


def loaded(runtime: FakeRuntime) -> dict[str, str]:
    """The adapters the base's fake vLLM holds."""
    loras = runtime.server("base").loras
    assert loras is not None, "the base serves no adapters"
    return loras.loaded


async def answer(engine: Any, name: str) -> str:
    """A completion for `name` at the endpoint its lease gives, under its served name."""
    view = engine.view.status().models[name]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{view.endpoint}/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 1}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        text: str = (await response.json())["choices"][0]["text"]
        return text


async def test_an_adapter_brings_its_base_up_then_answers_as_itself(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """From cold: the base is started (once), the adapter loaded into it; both run, and
    a request naming the adapter is answered by it, not by the base."""
    engine, runtime, _ = await engines(lora_config(tmp_path))
    result = await engine.models.switch("sql")
    assert result.status == "success"
    assert (state_of(engine, "base"), state_of(engine, "sql")) == (State.RUNNING,) * 2
    assert runtime.starts("base") == 1
    view = engine.view.status().models
    assert view["sql"].base == "base" and view["sql"].endpoint == view["base"].endpoint
    assert await answer(engine, "sql") == "sql"
    assert await answer(engine, "base") == "base"


async def test_switching_between_adapters_never_restarts_the_base(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """sql, then chat, then sql again: one start of the base; each adapter's load is
    learned (and far cheaper than the base's estimate)."""
    engine, runtime, _ = await engines(lora_config(tmp_path))
    await engine.models.switch("sql")
    second = await engine.models.switch("chat")
    again = await engine.models.switch("sql")
    assert runtime.starts("base") == 1
    assert second.status == "success" and second.unloaded_models == []
    assert again.status == "already_loaded"
    assert second.load_seconds is not None and second.load_seconds < 1
    assert set(loaded(runtime)) == {"sql", "chat"}


async def test_past_its_capacity_the_least_recently_used_idle_adapter_goes(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """--max-loras 2: a third adapter unloads the one used longest ago, unless it serves
    requests (then the other idle one goes); the base keeps running throughout."""
    engine, runtime, _ = await engines(lora_config(tmp_path))
    await engine.models.switch("sql")
    await engine.models.switch("chat")
    lease = await engine.leases.acquire("sql", owner=1)  # sql: used last, and leased
    third = await engine.models.switch("math")
    assert third.unloaded_models == ["chat"]
    assert state_of(engine, "chat") is State.STOPPED
    assert {state_of(engine, n) for n in ("sql", "math", "base")} == {State.RUNNING}
    engine.leases.release(lease.lease, owner=1)
    await engine.models.switch("chat")
    assert state_of(engine, "sql") is State.STOPPED  # now the least recently used idle
    assert runtime.starts("base") == 1


async def test_a_full_base_whose_adapters_all_serve_requests_drains_first(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """Both loaded adapters hold leases: a third waits for one to be released (never
    unloading an adapter with requests in flight), and is refused models_busy, having
    unloaded nothing, when none is released in time."""
    engine, _, _ = await engines(lora_config(tmp_path, drain_timeout_s=0.3))
    await engine.models.switch("sql")
    await engine.models.switch("chat")
    leases = [await engine.leases.acquire(n, owner=1) for n in ("sql", "chat")]
    with pytest.raises(ModelsBusy):
        await engine.models.switch("math")
    assert {state_of(engine, n) for n in ("sql", "chat")} == {State.RUNNING}
    events = engine.events.subscribe()
    waiting = asyncio.create_task(engine.models.switch("math"))
    await next_of(events, "drain", model="sql")  # the least recently used busy one
    engine.leases.release(leases[0].lease, owner=1)
    assert (await waiting).unloaded_models == ["sql"]
    assert state_of(engine, "chat") is State.RUNNING


async def test_stopping_an_adapter_unloads_it_and_leaves_the_base(
    engines: EngineFactory, tmp_path: Path
) -> None:
    engine, runtime, _ = await engines(lora_config(tmp_path))
    await engine.models.switch("sql")
    stopped = await engine.models.stop("sql")
    assert stopped.status == "stopped" and state_of(engine, "base") is State.RUNNING
    assert loaded(runtime) == {}
    assert await answer(engine, "base") == "base"


async def test_an_adapter_that_fails_to_load_says_vllms_reason_and_the_base_serves_on(
    engines: EngineFactory, tmp_path: Path
) -> None:
    engine, _, _ = await engines(lora_config(tmp_path))
    with pytest.raises(LoadFailed, match="No adapter found for"):
        await engine.models.switch("broken")
    view = engine.view.status().models["broken"]
    assert view.status == "failed" and view.failure is not None
    assert "No adapter found for" in view.failure.reason
    assert state_of(engine, "base") is State.RUNNING
    await engine.models.switch("sql")  # the base was not touched
    assert state_of(engine, "sql") is State.RUNNING


async def test_adapters_go_down_with_their_base_and_history_says_why(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """Switching to a model that evicts the base stops its adapters, each with the
    base's fate as its reason; asking for an adapter again brings the base back."""
    engine, runtime, _ = await engines(lora_config(tmp_path))
    await engine.models.switch("sql")
    events = engine.events.subscribe()
    await engine.models.switch("other")
    said = await next_of(events, "state", model="sql", to_state="stopped")
    assert said.reason == "its base base stopped"  # type: ignore[union-attr]
    assert any("base stopped" in e.reason for e in engine.models.history("sql"))
    await engine.models.switch("sql")
    assert runtime.starts("base") == 2 and state_of(engine, "other") is State.STOPPED


async def test_concurrent_asks_for_two_adapters_share_one_base_load(
    engines: EngineFactory, tmp_path: Path
) -> None:
    engine, runtime, _ = await engines(lora_config(tmp_path))
    granted = await asyncio.gather(
        engine.leases.acquire("sql", owner=1, timeout=30),
        engine.leases.acquire("chat", owner=2, timeout=30),
    )
    assert runtime.starts("base") == 1
    assert [g.served_model_name for g in granted] == ["sql", "chat"]
    assert {g.endpoint for g in granted} == {engine.view.status().models["base"].endpoint}


async def test_asks_past_its_capacity_at_once_never_load_more_than_it_holds(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """Three adapters asked for at once of a cold base taking two: the third waits for a
    load to end rather than loading past the capacity, then unloads the least recently
    used idle one; each switch succeeds and the base holds two."""
    engine, runtime, _ = await engines(lora_config(tmp_path))
    results = await asyncio.gather(*(engine.models.switch(n) for n in ("sql", "chat", "math")))
    assert [r.status for r in results] == ["success"] * 3
    running = {n for n in ("sql", "chat", "math") if state_of(engine, n) is State.RUNNING}
    assert len(running) == 2 and set(loaded(runtime)) == running
    assert runtime.starts("base") == 1


async def test_a_restarted_daemon_adopts_the_base_and_its_loaded_adapters(
    engines: EngineFactory, tmp_path: Path
) -> None:
    config = lora_config(tmp_path)
    first, runtime, gpu = await engines(config)
    await first.models.switch("sql")
    second = await start_over(config, runtime, gpu)
    try:
        async with asyncio.timeout(10):
            while state_of(second, "sql") is not State.RUNNING:
                await second.events.changed()
        assert state_of(second, "chat") is State.STOPPED
        assert runtime.starts("base") == 1
    finally:
        await second.shutdown()


async def test_the_plan_for_an_adapter_says_its_base_comes_first(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """Base down (and `other` in the way): the plan is the base's (stop other), then the
    adapter's load, estimated as both; with the base running, only the adapter's load."""
    engine, _, _ = await engines(lora_config(tmp_path))
    await engine.models.switch("other")
    plan = await engine.models.plan("sql")
    assert plan.model == "sql" and plan.stop == ["other"]
    assert plan.message.endswith("then sql is loaded into base")
    base_only = await engine.models.plan("base")
    assert plan.estimated_seconds is not None and base_only.estimated_seconds is not None
    assert plan.estimated_seconds > base_only.estimated_seconds
    await engine.models.switch("base")
    again = await engine.models.plan("sql")
    assert again.action == "start" and again.stop == [] and "base" not in again.message


async def test_after_its_base_crashes_an_adapter_loads_again_on_demand(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """The base's backend dies behind modeld's back: its adapters are stopped with it
    (said), and the next acquire of one starts the base again and loads it: granted."""
    engine, runtime, _ = await engines(lora_config(tmp_path))
    await engine.models.switch("sql")
    events = engine.events.subscribe()
    await runtime.kill_behind_back("base", exit_code=1)
    await engine.poll_once()
    said = await next_of(events, "state", model="sql", to_state="stopped")
    assert said.reason == "its base base failed"  # type: ignore[union-attr]
    granted = await engine.leases.acquire("sql", owner=1, timeout=30)
    assert granted.served_model_name == "sql" and runtime.starts("base") == 2
    assert await answer(engine, "sql") == "sql"


async def test_a_base_with_adapters_is_stopped_never_parked(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """vLLM has corrupted adapters after a wake: a sleep-mode base that has adapters is
    stopped to make room, never parked, though parking has room for it."""
    config = lora_config(tmp_path, base_sleeps=True, park_ram_gb=100)
    engine, _, _ = await engines(config)
    await engine.models.switch("sql")
    result = await engine.models.switch("other")
    assert result.parked_models == [] and result.unloaded_models == ["base"]
    assert state_of(engine, "base") is State.STOPPED


async def test_lru_values_a_base_by_the_last_use_of_its_adapters(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """lru: base was started before `other`, but its adapter was used after: making room
    for a third model evicts `other`, not the base its adapter's requests run in."""
    command = ["vllm", "--enable-lora"]
    models: dict[str, dict[str, Any]] = {
        "base": {"command": command, "gpu_memory_gb": 30},
        "other": {"gpu_memory_gb": 30},
        "third": {"gpu_memory_gb": 30},
        "sql": {"base": "base", "adapter": adapter_dir(tmp_path, "sql")},
    }
    engine, _, _ = await engines(make_config(models, [80], eviction_policy="lru"))
    await engine.models.switch("base")
    await engine.models.switch("other")
    await engine.models.switch("sql")
    result = await engine.models.switch("third")
    assert result.unloaded_models == ["other"]
    assert state_of(engine, "sql") is State.RUNNING


async def test_an_adapter_is_a_model_in_the_metrics_and_its_cost_is_learned(
    tmp_path: Path,
) -> None:
    """The daemon's Prometheus metrics count an adapter as a model (its state, its load
    time); its load time is learned, so estimates and plans use it."""
    async with metered(lora_config(tmp_path)) as (engine, _, url):
        await engine.models.switch("sql")
        samples = await scrape(url)
        assert samples[("modeld_model_state", (("model", "sql"), ("state", "running")))] == 1
        assert samples[("modeld_load_duration_seconds_count", (("model", "sql"),))] == 1
        view = engine.view.status().models["sql"]
        assert view.estimated_load_time_source == "learned"
        assert view.estimated_load_time_seconds < 1


async def test_a_base_that_fails_to_load_fails_its_adapters_load_saying_so(
    engines: EngineFactory, tmp_path: Path
) -> None:
    """The base exits while loading: the switch to its adapter fails with the base's
    fate as the reason (not a stop), and the adapter is failed, not loading."""
    engine, runtime, _ = await engines(lora_config(tmp_path))
    runtime.behaviour["base"] = Behaviour(load_seconds=0.2, exit_code=1)
    with pytest.raises(LoadFailed, match="its base base is failed"):
        await engine.models.switch("sql")
    view = engine.view.status().models["sql"]
    assert view.status == "failed" and view.failure is not None
    assert view.failure.reason == "its base base is failed"
    assert state_of(engine, "base") is State.FAILED
