"""Sleep-mode parking, waking and idle unload, end to end against the fake vLLM
backend (real HTTP: /sleep, /wake_up, /is_sleeping, /metrics) and the simulated GPU."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from modeld.adapters.gpu.base import BackendRef
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.hostmem import parkable_ram_gb, parse_meminfo
from modeld.core.activity import Activity, last_active, parse_activity
from modeld.core.errors import ConfigError, LoadFailed
from modeld.core.states import State
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour
from modeld.wire.events import AnyEvent
from tests.support import EngineFactory, make_config, start_over, state_of, wait_for_state

# Two 50 GB models that sleep, on one 80 GB GPU: only one runs at a time.
PARKABLE = {
    "a": {"gpu_memory_gb": 50, "size_gb": 40, "sleep_mode": True, "load_time_seconds": 60},
    "b": {"gpu_memory_gb": 50, "size_gb": 40, "sleep_mode": True, "load_time_seconds": 60},
}


def model_status(engine: Engine, name: str) -> dict[str, Any]:
    """One model's entry in `status`."""
    return engine.view.status().models[name].model_dump()


async def test_switch_parks_the_other_model_and_wakes_it_back(
    engines: EngineFactory,
) -> None:
    """a -> b parks a (weights to host RAM, a residual stays on the GPU, measured); b -> a
    wakes a without restarting its backend and parks b."""
    config = make_config(PARKABLE, [80], park_ram_gb=100, gpu={"sleep_residual_gb": 1.5})
    engine, runtime, _ = await engines(config)
    await engine.models.switch("a")
    result = await engine.models.switch("b")
    assert result.parked_models == ["a"]
    assert result.unloaded_models == ["a"]
    assert state_of(engine, "a") is State.SLEEPING
    assert runtime.server("a").sleeping
    parked = model_status(engine, "a")
    # What it keeps is what the GPU says (1.5 GB), not the 2 GB estimate, nor zero.
    assert parked["gpu_memory_used_gb"] == 1.5
    assert parked["gpu_memory_source"] == "measured"
    assert parked["parked"]["ram_gb"] == 40
    assert engine.view.status().parking.model_dump() == {
        "ram_budget_gb": 100,
        "ram_used_gb": 40.0,
        "ram_free_gb": 60.0,
    }

    back = await engine.models.switch("a")
    assert back.woke is True and back.wake_fallback is None
    assert back.wake_seconds is not None
    assert back.parked_models == ["b"]
    assert state_of(engine, "a") is State.RUNNING
    assert not runtime.server("a").sleeping
    assert runtime.starts("a") == 1  # woken, not cold-started
    woke = model_status(engine, "a")
    assert woke["last_wake_seconds"] == back.wake_seconds
    assert woke["gpu_memory_used_gb"] == 50


async def test_wake_failure_falls_back_to_a_cold_start(engines: EngineFactory) -> None:
    """A backend whose /wake_up fails is stopped and started afresh, and the answer says so."""
    engine, runtime, _ = await engines(make_config(PARKABLE, [80], park_ram_gb=100))
    runtime.behaviour["a"] = Behaviour(wake_fails=True)
    await engine.models.switch("a")
    await engine.models.switch("b")
    assert state_of(engine, "a") is State.SLEEPING
    with capture_logs() as logs:
        result = await engine.models.switch("a")
    assert result.woke is False
    assert result.wake_fallback is not None and "500" in result.wake_fallback
    assert state_of(engine, "a") is State.RUNNING
    assert runtime.starts("a") == 2
    assert model_status(engine, "a")["wake_fallback"] == result.wake_fallback
    assert any(e["event"] == "wake.failed" and e["fallback"] == "cold start" for e in logs)


async def test_ram_budget_exhausted_means_stop(engines: EngineFactory) -> None:
    """Host RAM for one parked model only: the second eviction stops instead of parking."""
    models = {**PARKABLE, "c": {**PARKABLE["a"]}}
    engine, _, _ = await engines(make_config(models, [80], park_ram_gb=60))
    await engine.models.switch("a")
    await engine.models.switch("b")
    result = await engine.models.switch("c")
    assert state_of(engine, "a") is State.SLEEPING
    assert result.parked_models == []
    assert result.unloaded_models == ["b"]
    assert state_of(engine, "b") is State.STOPPED
    assert engine.view.status().parking.ram_used_gb <= 60


async def test_without_a_budget_sleep_mode_models_are_stopped(
    engines: EngineFactory,
) -> None:
    """park_ram_gb = 0 (the default) disables parking: evictions stop as before."""
    engine, _, _ = await engines(make_config(PARKABLE, [80]))
    await engine.models.switch("a")
    result = await engine.models.switch("b")
    assert result.parked_models == []
    assert state_of(engine, "a") is State.STOPPED


async def test_pinned_sleep_mode_model_is_never_parked(engines: EngineFactory) -> None:
    """A pinned model stays running even though it could be parked."""
    models = {"a": {**PARKABLE["a"], "pinned": True}, "b": {**PARKABLE["b"], "gpu_memory_gb": 20}}
    models["c"] = {"gpu_memory_gb": 20}
    engine, _, _ = await engines(make_config(models, [80], park_ram_gb=100))
    await engine.models.switch("a")
    await engine.models.switch("b")
    await engine.models.switch("c")
    assert state_of(engine, "a") is State.RUNNING


async def test_parked_model_keeping_more_than_planned_leads_to_a_new_plan(
    engines: EngineFactory,
) -> None:
    """The planner counts on a 2 GB residual; the GPU shows 6 GB kept. modeld plans again
    with the measured figure and stops what it must, instead of starting into no room."""
    models = {
        "a": {"gpu_memory_gb": 40, "size_gb": 30, "sleep_mode": True},
        "b": {"gpu_memory_gb": 30},
        "c": {"gpu_memory_gb": 47},
    }
    config = make_config(models, [80], park_ram_gb=100, gpu={"sleep_residual_gb": 6.0})
    engine, runtime, _ = await engines(config)
    await engine.models.switch("a")
    await engine.models.switch("b")
    with capture_logs() as logs:
        result = await engine.models.switch("c")
    assert state_of(engine, "c") is State.RUNNING
    assert any(e["event"] == "switch.replan" for e in logs)
    assert result.unloaded_models is not None and "a" in result.unloaded_models
    assert runtime.free_at_start["c"] >= 47


async def test_monitor_notices_sleep_and_wake_behind_its_back(
    engines: EngineFactory,
) -> None:
    """Someone POSTs /sleep to a running model, then /wake_up: the monitor follows."""
    engine, _, _ = await engines(make_config(PARKABLE, [80], park_ram_gb=100))
    await engine.models.switch("a")
    endpoint = engine.view.status().models["a"].endpoint
    async with aiohttp.ClientSession() as http:
        await (await http.post(f"{endpoint}/sleep?level=1")).release()
        await engine.poll_once()
        assert state_of(engine, "a") is State.SLEEPING
        await (await http.post(f"{endpoint}/wake_up")).release()
        await engine.poll_once()
    assert await wait_for_state(engine, "a", {State.RUNNING}, 5) is State.RUNNING


async def test_a_parked_backend_found_at_startup_is_adopted_asleep(
    engines: EngineFactory,
) -> None:
    """A new daemon over a backend that sleeps adopts it as sleeping, not running."""
    config = make_config(PARKABLE, [80], park_ram_gb=100)
    first, runtime, gpu = await engines(config)
    await first.models.switch("a")
    await first.models.switch("b")
    second = await start_over(config, runtime, gpu)
    try:
        assert await wait_for_state(second, "a", {State.SLEEPING}, 5) is State.SLEEPING
        assert await wait_for_state(second, "b", {State.RUNNING}, 5) is State.RUNNING
        assert second.view.status().parking.ram_used_gb == 40
    finally:
        await second.shutdown()


def _field(event: AnyEvent, name: str) -> Any:
    """An event's field, None for a kind without it."""
    return getattr(event, name, None)


async def test_events_show_the_park_and_the_wake(engines: EngineFactory) -> None:
    """Subscribers see a's park as a switch step and a state change to sleeping."""
    engine, _, _ = await engines(make_config(PARKABLE, [80], park_ram_gb=100))
    await engine.models.switch("a")
    subscription = engine.events.subscribe()
    await engine.models.switch("b")
    await engine.models.switch("a")
    seen: list[AnyEvent] = []
    async with asyncio.timeout(5):
        while not seen or (_field(seen[-1], "model"), _field(seen[-1], "to_state")) != (
            "a",
            "running",
        ):
            seen.append(await subscription.next())
    kinds = [(e.type, _field(e, "to_state") or _field(e, "parked")) for e in seen]
    assert ("switch.parked", "a") in kinds
    assert ("state", "sleeping") in kinds
    assert ("switch.waking", None) in kinds


async def test_idle_model_is_unloaded_but_never_with_requests_in_flight(
    engines: EngineFactory,
) -> None:
    """A model with idle_unload_after_s is kept while a long request runs (metrics say
    one is in flight), and parked once it has served nothing for that long."""
    models = {"a": {**PARKABLE["a"], "idle_unload_after_s": 0.3}}
    config = make_config(models, [80], park_ram_gb=100, poll_interval_s=0.05)
    engine, runtime, _ = await engines(config)
    await engine.models.switch("a")
    server = runtime.server("a")
    server.request_seconds = 1.0
    endpoint = engine.view.status().models["a"].endpoint
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{endpoint}/v1/completions", json={"prompt": "hi"}) as response:
            assert response.status == 200
        # The request took three idle periods; the model answered it, so it still runs.
        assert state_of(engine, "a") is State.RUNNING
    assert await wait_for_state(engine, "a", {State.SLEEPING}, 10) is State.SLEEPING


async def test_idle_unload_stops_a_model_without_sleep_mode(
    engines: EngineFactory,
) -> None:
    """Without sleep mode, an idle model is stopped; steady requests keep another running."""
    models = {
        "idle": {"gpu_memory_gb": 20, "idle_unload_after_s": 0.3},
        "busy": {"gpu_memory_gb": 20, "idle_unload_after_s": 0.3},
    }
    engine, _, _ = await engines(make_config(models, [80], poll_interval_s=0.05))
    await engine.models.switch("idle")
    await engine.models.switch("busy")
    endpoint = engine.view.status().models["busy"].endpoint

    async def keep_busy() -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                await (await http.post(f"{endpoint}/v1/completions", json={})).release()
                await asyncio.sleep(0.05)

    client = asyncio.create_task(keep_busy())
    try:
        assert await wait_for_state(engine, "idle", {State.STOPPED}, 10) is State.STOPPED
        # A window of three idle periods (the only way to see that something does not
        # happen): steady requests keep it running throughout.
        with pytest.raises(TimeoutError):
            await wait_for_state(engine, "busy", {State.STOPPED, State.STOPPING}, 1.0)
    finally:
        client.cancel()
    assert await wait_for_state(engine, "busy", {State.STOPPED}, 10) is State.STOPPED


def test_pinned_models_cannot_be_idle_unloaded() -> None:
    """pinned with idle_unload_after_s is a config error naming the model."""
    with pytest.raises(ConfigError, match=r"models\.a.*pinned model is never unloaded"):
        make_config({"a": {"pinned": True, "idle_unload_after_s": 60}})


def test_sleep_mode_adds_vllm_flag_and_dev_mode() -> None:
    """sleep_mode appends --enable-sleep-mode to the command and sets VLLM_SERVER_DEV_MODE."""
    config = make_config({"a": {"sleep_mode": True, "command": ["vllm", "serve", "m"]}})
    model = config.models["a"]
    assert model.launch_command == ["vllm", "serve", "m", "--enable-sleep-mode"]
    assert model.launch_env["VLLM_SERVER_DEV_MODE"] == "1"
    plain = make_config({"a": {"command": ["vllm", "serve", "m"]}}).models["a"]
    assert plain.launch_command == ["vllm", "serve", "m"]
    assert "VLLM_SERVER_DEV_MODE" not in plain.launch_env


async def test_simulated_gpu_keeps_a_residual_while_parked() -> None:
    """The simulated driver frees all but sleep_residual_gb of a parked backend, and
    takes the whole share back once it wakes."""
    config = make_config({"a": {}}, [80], gpu={"sleep_residual_gb": 1.0}).gpu
    gpu = SimulatedGpu(config, alive=lambda pid: True)
    awake = BackendRef("a", 10, expected_gb={0: 30.0})
    asleep = BackendRef("a", 10, expected_gb={0: 30.0}, parked=True)
    assert (await gpu.read([awake])).devices[0].used_gb == 30
    assert (await gpu.read([asleep])).devices[0].used_gb == 1
    assert (await gpu.read([awake])).devices[0].used_gb == 30


async def test_failed_switch_wakes_the_model_it_parked(engines: EngineFactory) -> None:
    """The target exits while loading after a was parked for it: a is woken back (not
    cold-started), and the error says it was restored."""
    models = {**PARKABLE, "bad": {"gpu_memory_gb": 50}}
    engine, runtime, _ = await engines(make_config(models, [80], park_ram_gb=100))
    runtime.behaviour["bad"] = Behaviour(exit_code=1)
    await engine.models.switch("a")
    with pytest.raises(LoadFailed) as failed:
        await engine.models.switch("bad")
    assert failed.value.data["restored"] == ["a"]
    assert state_of(engine, "a") is State.RUNNING
    assert runtime.starts("a") == 1


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 40.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 2.0
"""


def test_vllm_metrics_are_read_as_activity() -> None:
    """Finished requests are summed over finish reasons; queued ones count as in flight;
    an exposition without vLLM's metrics gives None."""
    assert parse_activity(VLLM_METRICS) == Activity(finished=42.0, in_flight=2.0, waiting=2.0)
    assert parse_activity("# TYPE other gauge\nother 1\n") is None


def test_last_active_moves_only_on_evidence_of_use() -> None:
    """Busy when requests are in flight or more finished; unreadable metrics count as
    busy; the same counts as before leave the idle clock running."""
    quiet = Activity(finished=5, in_flight=0)
    assert last_active(quiet, quiet, since=10.0, now=20.0) == 10.0
    assert last_active(quiet, Activity(6, 0), since=10.0, now=20.0) == 20.0
    assert last_active(quiet, Activity(5, 1), since=10.0, now=20.0) == 20.0
    assert last_active(quiet, None, since=10.0, now=20.0) == 20.0
    assert last_active(None, quiet, since=10.0, now=20.0) == 10.0


MEMINFO = """\
MemTotal:       65536000 kB
MemFree:         1000000 kB
MemAvailable:   20971520 kB
Buffers:          100000 kB
"""


def test_host_ram_to_spare_is_available_less_a_tenth(tmp_path: Path) -> None:
    """20 GiB available of 62.5 GiB: 13.75 GiB may be parked; unreadable is None."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert parse_meminfo(MEMINFO)["MemAvailable"] == 20.0
    assert parkable_ram_gb(meminfo) == pytest.approx(20.0 - 6.25)
    assert parkable_ram_gb(tmp_path / "missing") is None


async def test_a_host_short_of_ram_stops_instead_of_parking(
    engines: EngineFactory,
) -> None:
    """The budget allows 100 GB but the host can spare 30: a model whose weights take 40
    is stopped, not parked into swap."""
    config = make_config(PARKABLE, [80], park_ram_gb=100)
    engine, _, _ = await engines(config, host_ram=lambda: 30.0)
    await engine.models.switch("a")
    result = await engine.models.switch("b")
    assert result.parked_models == []
    assert state_of(engine, "a") is State.STOPPED
    assert engine.view.status().parking.ram_free_gb == 30.0
