"""`plan`: a dry run of a switch says what it would stop, park and start, with the
figures and the reason, and changes nothing; the switch that follows does the same."""

from __future__ import annotations

from modeld.core.states import State
from tests.support import EngineFactory, make_config, state_of

TWO = {
    "a": {"gpu_memory_gb": 50, "load_time_seconds": 12},
    "b": {"gpu_memory_gb": 50, "load_time_seconds": 7},
}


async def test_the_plan_is_what_the_switch_then_does_and_changes_nothing(
    engines: EngineFactory,
) -> None:
    """With a running, the plan for b stops a, needs 50 GB of 30 free, takes ~7.0 s and
    names the policy and the candidates weighed; nothing starts or stops until the
    switch, which stops exactly what the plan said."""
    engine, runtime, _ = await engines(make_config(TWO, [80]))
    await engine.models.switch("a")
    plan = await engine.models.plan("b")
    assert plan.action == "start"
    assert plan.stop == ["a"] and plan.park == []
    assert plan.memory_info is not None
    assert plan.memory_info.required_gb == 50 and plan.memory_info.available_before_gb == 30
    assert plan.estimated_seconds == 7
    assert plan.policy == "largest_first"
    assert [(c.name, c.held_gb, c.movable) for c in plan.candidates] == [("a", 50, True)]
    assert plan.message == "stop a; then start b (~7.0 s)"
    assert state_of(engine, "a") is State.RUNNING and state_of(engine, "b") is State.STOPPED
    assert runtime.starts("b") == 0
    switched = await engine.models.switch("b")
    assert switched.unloaded_models == plan.stop


async def test_plans_for_a_running_model_and_one_that_never_fits(engines: EngineFactory) -> None:
    """A running model: nothing to do. One larger than what could be freed: refused,
    with the numbers, as the switch would be."""
    models = {**TWO, "huge": {"gpu_memory_gb": 75}}
    engine, _, _ = await engines(make_config(models, [80], gpu={"external_used_gb": [10]}))
    await engine.models.switch("a")
    assert (await engine.models.plan("a")).action == "none"
    refused = await engine.models.plan("huge")
    assert refused.action == "refuse"
    assert "needs 75.0 GB" in refused.message and "70.0 GB" in refused.message
    assert state_of(engine, "a") is State.RUNNING


async def test_a_model_serving_requests_is_drained_unless_forced(engines: EngineFactory) -> None:
    """a holds a lease: the plan says a switch would wait for its requests (drain);
    planned as a forced switch, it stops a at once. The lease is untouched."""
    engine, _, _ = await engines(make_config(TWO, [80]))
    lease = await engine.leases.acquire("a", owner=1)
    drained = await engine.models.plan("b")
    assert drained.action == "drain" and drained.busy == ["a"]
    assert [c.movable for c in drained.candidates] == [False]
    forced = await engine.models.plan("b", force=True)
    assert forced.action == "start" and forced.stop == ["a"]
    engine.leases.release(lease.lease, owner=1)


async def test_with_sleep_mode_the_plan_parks_and_later_wakes(engines: EngineFactory) -> None:
    """Parking on: the plan for b parks a instead of stopping it; once a sleeps, the plan
    for a is a wake, with the wake's estimate."""
    models = {
        "a": {"gpu_memory_gb": 50, "sleep_mode": True, "size_gb": 40, "wake_time_seconds": 2},
        "b": {"gpu_memory_gb": 50},
    }
    engine, _, _ = await engines(make_config(models, [80], park_ram_gb=100))
    await engine.models.switch("a")
    parks = await engine.models.plan("b")
    assert parks.action == "start" and parks.park == ["a"] and parks.stop == []
    assert [c.can_park for c in parks.candidates] == [True]
    await engine.models.switch("b")
    assert state_of(engine, "a") is State.SLEEPING
    wakes = await engine.models.plan("a")
    assert wakes.action == "wake" and wakes.estimated_seconds == 2
    assert wakes.stop == ["b"]
