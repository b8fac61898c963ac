"""The Engine against the fake runtime (real HTTP health) and the simulated GPU."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from modeld.adapters.gpu.base import BackendRef, GpuReading
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.core.config import ModelConfig
from modeld.core.errors import (
    ConfigError,
    GpuUnavailable,
    InsufficientMemory,
    LoadFailed,
    OperationTimeout,
    UnknownModel,
)
from modeld.core.restart_policy import GiveUp, Retry, decide_restart, restart_delay
from modeld.core.states import State
from modeld.testing.fakes import Behaviour, FakeRuntime
from tests.support import (
    SEED_GPU_FIELDS,
    SEED_MODEL_FIELDS,
    EngineFactory,
    make_config,
    start_over,
    state_of,
    wait_for_state,
)

THREE = {
    "alpha": {"gpu_memory_gb": 30, "size_gb": 35},
    "beta": {"gpu_memory_gb": 25, "size_gb": 29},
    "gamma": {"gpu_memory_gb": 30, "size_gb": 35},
}


async def test_already_loaded(engines: EngineFactory) -> None:
    """A second switch to a running, healthy model answers `already_loaded` and starts nothing."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    first = await engine.models.switch("alpha")
    assert first.status == "success"
    assert first.state == "running"
    second = await engine.models.switch("alpha")
    assert second.status == "already_loaded"
    assert runtime.starts("alpha") == 1


async def test_switch_stops_largest_and_waits_for_memory(engines: EngineFactory) -> None:
    """Only two fit: switching to the third stops the largest, after its memory is free."""
    config = make_config(THREE, [60], gpu={"release_delay_s": 0.3})
    engine, runtime, _ = await engines(config)
    await engine.models.switch("alpha")
    await engine.models.switch("beta")
    result = await engine.models.switch("gamma")
    assert result.status == "success"
    assert result.unloaded_models == ["alpha"]
    assert result.memory_info is not None
    assert result.memory_info.answer() == {
        "required_gb": 30.0,
        "available_before_gb": 5.0,
        "freed_gb": 30.0,
        "device": 0,
        "source": "configured",
        "per_device": {"0": {"required_gb": 30.0, "available_before_gb": 5.0, "freed_gb": 30.0}},
    }
    # The start came only once the simulated driver had released alpha's memory.
    assert runtime.free_at_start["gamma"] >= 30
    assert state_of(engine, "alpha") is State.STOPPED
    assert state_of(engine, "beta") is State.RUNNING
    assert state_of(engine, "gamma") is State.RUNNING


async def test_insufficient_memory_changes_nothing(engines: EngineFactory) -> None:
    """A target that cannot fit beside the memory others hold, even with every model of
    modeld's stopped, is refused with the seed's numbers; nothing stops."""
    models = {**THREE, "huge": {"gpu_memory_gb": 70, "size_gb": 80}}
    # 70 GB fits the 80 GB GPU alone, never beside the 20 GB held outside modeld.
    engine, runtime, _ = await engines(make_config(models, [80], gpu={"external_used_gb": [20]}))
    await engine.models.switch("alpha")
    with pytest.raises(InsufficientMemory) as caught:
        await engine.models.switch("huge")
    assert caught.value.data == {
        "error": "insufficient_memory",
        "model": "huge",
        "device": 0,
        "required_gb": 70.0,
        "available_gb": 30.0,
        "freed_gb": 30.0,
        "total_available_gb": 60.0,
        "pinned_blocking": [],
        "staying": {},
    }
    assert "No model is in the way: the rest is held by processes outside modeld" in str(
        caught.value
    )
    assert state_of(engine, "alpha") is State.RUNNING
    assert runtime.events == [("start", "alpha")]


async def test_a_refusal_names_who_stays_and_why_and_what_to_do(engines: EngineFactory) -> None:
    """A switch refused because the models in the way may not move says which stay and
    why (pinned) and what the operator can do about each; the dry run says the same. (A
    loading or busy model in the way is waited for, not a refusal.)"""
    models = {
        "chat": {"gpu_memory_gb": 40, "pinned": True},
        "coder": {"gpu_memory_gb": 30, "pinned": True},
        "big": {"gpu_memory_gb": 50},
    }
    engine, _, _ = await engines(make_config(models, [80]))
    await engine.models.switch("chat")
    await engine.models.switch("coder")
    with pytest.raises(InsufficientMemory) as caught:
        await engine.models.switch("big")
    assert caught.value.data["staying"] == {"chat": "pinned", "coder": "pinned"}
    said = str(caught.value)
    assert "Staying: chat (pinned), coder (pinned)." in said
    assert "for chat, set pinned = false in its table and run modelctl reload" in said
    plan = await engine.models.plan("big")
    assert plan.action == "refuse" and "Staying: chat (pinned), coder (pinned)." in plan.message


async def test_a_model_that_can_never_fit_stops_the_daemon_at_start(
    engines: EngineFactory,
) -> None:
    """A model that needs more than its GPU has, even alone, is a config error at start,
    naming the model and the numbers (the daemon exits 78), not a refusal at each request."""
    models = {**THREE, "huge": {"gpu_memory_gb": 70}}
    with pytest.raises(ConfigError) as caught:
        await engines(make_config(models, [60]))
    assert "models.huge: needs 70.0 GB on GPU 0, which has 60.0 GB" in caught.value.message
    assert caught.value.data["fields"] == ["models.huge"]


async def test_unmanaged_memory_is_never_promised(engines: EngineFactory) -> None:
    """Memory held by processes modeld does not manage counts as used."""
    config = make_config(THREE, [60], gpu={"external_used_gb": [35]})
    engine, _, _ = await engines(config)
    with pytest.raises(InsufficientMemory) as caught:
        await engine.models.switch("alpha")
    assert caught.value.data["total_available_gb"] == 25.0


async def test_start_refuses_to_evict(engines: EngineFactory) -> None:
    """`start` never stops another model; it says which ones a switch would stop."""
    engine, _, _ = await engines(make_config(THREE, [60]))
    await engine.models.switch("alpha")
    await engine.models.switch("beta")
    with pytest.raises(InsufficientMemory) as caught:
        await engine.models.start("gamma")
    assert caught.value.data["would_stop"] == ["alpha"]
    assert state_of(engine, "alpha") is State.RUNNING


async def test_loading_target_is_waited_for_not_started_twice(
    engines: EngineFactory,
) -> None:
    """A switch to a model still loading joins that load instead of starting another backend."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    runtime.behaviour["alpha"] = Behaviour(load_seconds=0.5)
    first = await engine.models.switch("alpha", wait=False)
    assert first.state == "loading"
    second = await engine.models.switch("alpha")
    assert second.status == "success"
    assert second.state == "running"
    assert runtime.starts("alpha") == 1


async def test_concurrent_switches_are_served_one_at_a_time(
    engines: EngineFactory,
) -> None:
    """Three switches at once, each needing the others gone: never overcommitted, no overlap."""
    models = {name: {"gpu_memory_gb": 50} for name in ("a", "b", "c")}
    config = make_config(models, [80], gpu={"release_delay_s": 0.1})
    engine, runtime, _ = await engines(config)
    for name in models:
        runtime.behaviour[name] = Behaviour(load_seconds=0.2)
    results = await asyncio.gather(*(engine.models.switch(name) for name in models))
    assert all(r.status == "success" for r in results)
    # Each start is followed by the previous model's stop only after it was running.
    assert [kind for kind, _ in runtime.events] == ["start", "stop", "start", "stop", "start"]
    assert all(free >= 50 for free in runtime.free_at_start.values())
    running = [n for n in models if state_of(engine, n) is State.RUNNING]
    assert running == [results[-1].model]


async def test_exit_during_load_fails_at_once(engines: EngineFactory) -> None:
    """A backend that exits while loading is `failed` with its exit code and last lines."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    runtime.behaviour["alpha"] = Behaviour(load_seconds=0.1, exit_code=3)
    with pytest.raises(LoadFailed) as caught:
        await engine.models.switch("alpha")
    assert caught.value.data["exit_code"] == 3
    assert caught.value.data["last_lines"] == ["alpha: CUDA error: out of memory"]
    view = engine.view.status().models["alpha"]
    assert view.status == "failed"
    assert view.failure is not None and view.failure.exit_code == 3


async def test_load_timeout_fails_and_stops_backend(engines: EngineFactory) -> None:
    """A backend that never answers is `failed` after load_timeout_s and is stopped."""
    config = make_config({"slow": {"gpu_memory_gb": 10, "load_timeout_s": 0.3}}, [60])
    engine, runtime, _ = await engines(config)
    runtime.behaviour["slow"] = Behaviour(load_seconds=60)
    with pytest.raises(OperationTimeout):
        await engine.models.switch("slow")
    assert state_of(engine, "slow") is State.FAILED
    assert runtime.events[-1] == ("stop", "slow")


async def test_caller_timeout_leaves_load_running(engines: EngineFactory) -> None:
    """A caller's own timeout answers `timeout`; the model goes on loading and then runs."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    runtime.behaviour["alpha"] = Behaviour(load_seconds=0.4)
    with pytest.raises(OperationTimeout) as caught:
        await engine.models.switch("alpha", timeout=0.05)
    assert caught.value.data["state"] == "loading"
    assert await wait_for_state(engine, "alpha", {State.RUNNING}, 5) is State.RUNNING


async def test_failed_start_is_reported(engines: EngineFactory) -> None:
    """A backend that cannot be started is `failed` with the runtime's message."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    runtime.behaviour["alpha"] = Behaviour(start_error="image not found")
    with pytest.raises(LoadFailed, match="image not found"):
        await engine.models.switch("alpha")
    failure = engine.view.status().models["alpha"].failure
    assert failure is not None and failure.reason == "alpha: image not found"


async def test_exit_behind_back_is_noticed(engines: EngineFactory) -> None:
    """A running backend stopped outside modeld turns `failed` with its exit code."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    await engine.models.switch("alpha")
    await runtime.kill_behind_back("alpha", exit_code=137)
    with capture_logs() as logs:
        await engine.poll_once()
    assert state_of(engine, "alpha") is State.FAILED
    failure = engine.view.status().models["alpha"].failure
    assert failure is not None and failure.exit_code == 137
    assert {
        "event": "model.transition",
        "model": "alpha",
        "from_state": "running",
        "to_state": "failed",
    }.items() <= logs[0].items()


async def test_engine_death_is_noticed(engines: EngineFactory) -> None:
    """`/health` 503 on a running model (vLLM's engine died) turns it `failed`."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    await engine.models.switch("alpha")
    runtime.engine_dies("alpha")
    await engine.poll_once()
    assert state_of(engine, "alpha") is State.FAILED


async def test_failed_model_can_be_switched_to_again(engines: EngineFactory) -> None:
    """After a failed load, a new switch starts the model afresh."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    runtime.behaviour["alpha"] = Behaviour(exit_code=1)
    with pytest.raises(LoadFailed):
        await engine.models.switch("alpha")
    runtime.behaviour["alpha"] = Behaviour()
    assert (await engine.models.switch("alpha")).state == "running"


async def test_stop_is_idempotent_and_restart_reloads(engines: EngineFactory) -> None:
    """stop twice is fine; restart stops then starts the backend again."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    await engine.models.switch("alpha")
    assert (await engine.models.restart("alpha")).status == "restarted"
    assert runtime.starts("alpha") == 2
    assert (await engine.models.stop("alpha")).status == "stopped"
    assert (await engine.models.stop("alpha")).status == "already_stopped"
    assert state_of(engine, "alpha") is State.STOPPED


async def test_stop_during_load_aborts_it(engines: EngineFactory) -> None:
    """Stopping a model that is still loading ends the load and stops the backend."""
    engine, runtime, _ = await engines(make_config(THREE, [60]))
    runtime.behaviour["alpha"] = Behaviour(load_seconds=30)
    await engine.models.switch("alpha", wait=False)
    await engine.models.stop("alpha")
    assert state_of(engine, "alpha") is State.STOPPED
    assert runtime.events == [("start", "alpha"), ("stop", "alpha")]


async def test_unknown_model_lists_available(engines: EngineFactory) -> None:
    """An unknown name is refused with the available names."""
    engine, _, _ = await engines(make_config(THREE, [60]))
    with pytest.raises(UnknownModel) as caught:
        await engine.models.switch("nope")
    assert caught.value.data["available"] == ["alpha", "beta", "gamma"]


async def test_status_has_seed_fields(engines: EngineFactory) -> None:
    """`status` carries the seed's per-model and GPU fields, with sources."""
    engine, _, _ = await engines(make_config(THREE, [60]))
    await engine.models.switch("alpha")
    status = engine.view.status()
    alpha = status.models["alpha"]
    assert alpha.model_dump().keys() >= SEED_MODEL_FIELDS
    assert status.gpu.model_dump().keys() >= SEED_GPU_FIELDS
    assert alpha.status == "running"
    assert alpha.health == "healthy"
    assert alpha.gpu_memory_used_gb == 30.0
    assert alpha.gpu_memory_source == "measured"
    assert status.gpu.used_mb == 30 * 1024
    assert status.gpu.available_gb == 30.0
    assert status.gpu.total_mb == 60 * 1024


class FlakyGpu(SimulatedGpu):
    """A simulated GPU whose driver can be made to fail reads, as NVML can."""

    failing = False

    async def read(self, backends: Sequence[BackendRef]) -> GpuReading:
        """Fail with GpuUnavailable while `failing`."""
        if self.failing:
            raise GpuUnavailable("NVML read failed: GPU is lost", reason="GPU is lost")
        return await super().read(backends)


async def test_gpu_read_errors_use_recent_reading_then_refuse() -> None:
    """A failed read falls back to a recent reading (marked stale); none fresh: refused."""
    config = make_config(THREE, [60], gpu={"stale_after_s": 0.2})
    runtime = FakeRuntime()
    gpu = FlakyGpu(config.gpu, alive=runtime.alive)
    engine = await start_over(config, runtime, gpu)
    try:
        gpu.failing = True
        assert (await engine.models.switch("alpha")).state == "running"
        assert engine.view.gpu().stale is True
        assert engine.view.gpu().error == "NVML read failed: GPU is lost"
        await wait_for_state(engine, "alpha", {State.RUNNING}, 1)
        await asyncio.sleep(0.3)  # let the last good reading age past stale_after_s
        with pytest.raises(GpuUnavailable):
            await engine.models.switch("beta")
        assert state_of(engine, "beta") is State.STOPPED
        assert engine.view.status().models["alpha"].status == "running"
        gpu.failing = False
        assert (await engine.models.switch("beta")).state == "running"
        assert engine.view.gpu().stale is False
    finally:
        await engine.shutdown()


async def test_lingering_failed_backend_is_cleared_before_restart(
    engines: EngineFactory,
) -> None:
    """A failed model whose server still holds memory is stopped, then started afresh."""
    engine, runtime, _ = await engines(make_config({"alpha": {"gpu_memory_gb": 50}}, [60]))
    await engine.models.switch("alpha")
    runtime.engine_dies("alpha")  # /health 503, but the server process lives on
    await engine.poll_once()
    assert state_of(engine, "alpha") is State.FAILED
    result = await engine.models.switch("alpha")
    assert result.state == "running"
    assert runtime.events == [("start", "alpha"), ("stop", "alpha"), ("start", "alpha")]
    assert runtime.free_at_start["alpha"] >= 50


@pytest.mark.parametrize("rollback", [True, False])
async def test_failed_switch_restores_what_it_stopped(
    engines: EngineFactory, rollback: bool
) -> None:
    """The target fails after alpha was stopped for it: alpha comes back (unless disabled)."""
    config = make_config(THREE, [60], rollback_on_failure=rollback)
    engine, runtime, _ = await engines(config)
    await engine.models.switch("alpha")
    await engine.models.switch("beta")
    runtime.behaviour["gamma"] = Behaviour(exit_code=2)
    with pytest.raises(LoadFailed) as caught:
        await engine.models.switch("gamma")
    assert state_of(engine, "gamma") is State.FAILED
    assert state_of(engine, "beta") is State.RUNNING
    if rollback:
        assert caught.value.data["restored"] == ["alpha"]
        assert caught.value.data["not_restored"] == {}
        assert state_of(engine, "alpha") is State.RUNNING
        assert runtime.starts("alpha") == 2
    else:
        assert "restored" not in caught.value.data
        assert state_of(engine, "alpha") is State.STOPPED


async def test_restart_on_failure_backs_off_and_gives_up(engines: EngineFactory) -> None:
    """A model that keeps dying is restarted max_retries times, then left failed."""
    table = {
        "gpu_memory_gb": 10,
        "restart": "on-failure",
        "restart_max_retries": 2,
        "restart_backoff_s": 0.05,
    }
    engine, runtime, _ = await engines(make_config({"alpha": table}, [60]))
    await engine.models.switch("alpha")
    for attempt in (1, 2):
        await runtime.kill_behind_back("alpha", exit_code=1)
        await engine.poll_once()
        restart = engine.view.status().models["alpha"].restart
        assert restart.attempts == attempt
        assert restart.next_attempt_at is not None
        await wait_for_state(engine, "alpha", {State.RUNNING}, 10)
    await runtime.kill_behind_back("alpha", exit_code=1)
    await engine.poll_once()
    view = engine.view.status().models["alpha"]
    assert view.status == "failed"
    assert view.restart.model_dump() == {
        "policy": "on-failure",
        "attempts": 2,
        "max_retries": 2,
        "next_attempt_at": None,
        "gave_up": True,
    }
    assert runtime.starts("alpha") == 3


async def test_operator_action_cancels_pending_restart(engines: EngineFactory) -> None:
    """Stopping a model while its restart waits cancels the restart."""
    table = {"gpu_memory_gb": 10, "restart": "on-failure", "restart_backoff_s": 30}
    engine, runtime, _ = await engines(make_config({"alpha": table}, [60]))
    await engine.models.switch("alpha")
    await runtime.kill_behind_back("alpha")
    await engine.poll_once()
    assert engine.view.status().models["alpha"].restart.attempts == 1
    await engine.models.stop("alpha")
    view = engine.view.status().models["alpha"]
    assert view.status == "stopped"
    assert view.restart.attempts == 0
    assert view.restart.next_attempt_at is None


def test_backoff_doubles_up_to_the_cap() -> None:
    """1, 2, 4, 8 ... seconds, never above the cap."""
    assert [restart_delay(n, 1.0, 10.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]


def test_restart_decision_resets_after_a_stable_run() -> None:
    """A model that ran past restart_reset_after_s starts counting from zero again."""
    model = ModelConfig.model_validate(
        {
            "name": "m",
            "runtime": "process",
            "command": ["x"],
            "endpoint": "http://x",
            "restart": "on-failure",
            "restart_max_retries": 2,
            "restart_reset_after_s": 60,
        }
    )
    assert decide_restart(model, attempts=2, ran_for_s=5) == GiveUp(2)
    assert decide_restart(model, attempts=2, ran_for_s=61) == Retry(delay_s=1.0, attempt=1)
    assert decide_restart(model, attempts=1, ran_for_s=5) == Retry(delay_s=2.0, attempt=2)
    policy_no = model.model_copy(update={"restart": "no"})
    assert decide_restart(policy_no, attempts=0, ran_for_s=0) is None


async def test_cost_aware_stops_the_model_least_wanted_back(
    engines: EngineFactory,
) -> None:
    """With cost_aware the daemon feeds demand and learned load times to the planner: the
    popular, slow-to-load model stays although it is the largest."""
    config = make_config(THREE, [60], eviction_policy="cost_aware")
    engine, runtime, _ = await engines(config)
    runtime.behaviour["alpha"] = Behaviour(load_seconds=0.3)
    await engine.models.switch("beta")
    for _ in range(5):
        await engine.models.switch("alpha")  # people keep asking for alpha
    result = await engine.models.switch("gamma")
    assert result.unloaded_models == ["beta"]
    assert state_of(engine, "alpha") is State.RUNNING


async def test_preload_starts_in_order_within_memory(engines: EngineFactory) -> None:
    """Preloaded models start in order; one that would need an eviction is skipped."""
    config = make_config(THREE, [60], preload=["beta", "alpha", "gamma"])
    engine, runtime, _ = await engines(config)
    outcome = await engine.models.preload()
    assert outcome == {"beta": "running", "alpha": "running", "gamma": "insufficient_memory"}
    assert [model for kind, model in runtime.events if kind == "start"] == ["beta", "alpha"]
    assert state_of(engine, "gamma") is State.STOPPED


def test_preload_names_must_be_models() -> None:
    """A preload entry that is not a configured model is a config error naming the field."""
    with pytest.raises(ConfigError, match=r"daemon\.preload"):
        make_config(THREE, [60], preload=["nope"])


async def test_switch_right_after_a_stop_counts_memory_being_released(
    engines: EngineFactory,
) -> None:
    """`stop alpha` then at once `switch gamma`: the memory alpha is still releasing is
    counted as coming back, so beta is not stopped for it; gamma starts once it is free."""
    config = make_config(THREE, [60], gpu={"release_delay_s": 0.5})
    engine, runtime, _ = await engines(config)
    await engine.models.switch("alpha")
    await engine.models.switch("beta")
    await engine.models.stop("alpha")
    result = await engine.models.switch("gamma")
    assert result.unloaded_models == []
    assert state_of(engine, "beta") is State.RUNNING
    assert runtime.free_at_start["gamma"] >= 30
