"""The lock guards decisions, not waits: while one model loads, every other operation
proceeds; a loading model is joined, never started twice, and never evicted under its
waiting callers. Ordered by events, not by timing."""

from __future__ import annotations

import asyncio

import pytest

from modeld.core.errors import LoadFailed
from modeld.core.states import State
from modeld.testing.fakes import Behaviour
from modeld.wire.events import AnyEvent
from tests.support import EngineFactory, eventually, make_config, state_of, wait_for_state

MODELS = {name: {"gpu_memory_gb": 20} for name in ("slow", "other", "third")}


async def test_other_operations_proceed_while_a_model_loads(
    engines: EngineFactory,
) -> None:
    """With `slow` loading: stopping another model, switching to a third that fits,
    status and a second switch to `slow` all answer before the load ends; the second
    switch joins the load (one backend); a stop of `slow` ends it and both waiting callers
    hear that it was stopped."""
    engine, runtime, _ = await engines(make_config(MODELS, [80]))
    await engine.models.switch("other")
    runtime.behaviour["slow"] = Behaviour(load_seconds=60)
    first = asyncio.create_task(engine.models.switch("slow"))
    await wait_for_state(engine, "slow", {State.LOADING}, 5)

    assert (await engine.models.stop("other")).status == "stopped"
    assert state_of(engine, "slow") is State.LOADING
    assert (await engine.models.switch("third")).state == "running"
    assert state_of(engine, "slow") is State.LOADING
    assert engine.view.status().models["slow"].status == "loading"
    assert engine.view.status().in_flight == 1  # the caller waiting on `slow`

    second = asyncio.create_task(engine.models.switch("slow"))
    # Joining takes the lock for a moment only; then both wait on the same load.

    async def both_waiting() -> bool:
        return bool(engine.view.status().in_flight == 2)

    await eventually(both_waiting, timeout=5)
    assert runtime.starts("slow") == 1
    assert (await engine.models.stop("slow")).status == "stopped"
    for waiting in (first, second):
        with pytest.raises(LoadFailed, match="stopped while loading") as caught:
            await waiting
        assert caught.value.data["reason"] == "stopped"
    assert runtime.starts("slow") == 1


async def test_a_switch_needing_a_loading_models_memory_waits_for_that_load(
    engines: EngineFactory,
) -> None:
    """A loading model is never evicted under its waiting caller: a switch that needs
    its memory waits for the load to end (its caller gets its answer), then plans."""
    models = {"first": {"gpu_memory_gb": 50}, "second": {"gpu_memory_gb": 50}}
    engine, runtime, _ = await engines(make_config(models, [80]))
    runtime.behaviour["first"] = Behaviour(load_seconds=0.3)
    events = engine.events.subscribe()
    loading = asyncio.create_task(engine.models.switch("first"))
    await wait_for_state(engine, "first", {State.LOADING}, 5)
    result = await engine.models.switch("second")
    assert result.state == "running"
    assert result.unloaded_models == ["first"]
    assert (await loading).state == "running"  # it did answer before being evicted
    seen: list[AnyEvent] = []
    while len(seen) < 50 and not (seen and seen[-1].type == "switch.room_ready"):
        seen.append(await asyncio.wait_for(events.next(), 5))
    kinds = [(e.type, getattr(e, "model", None), getattr(e, "to_state", None)) for e in seen]
    healthy = kinds.index(("state", "first", "running"))
    planned = kinds.index(("switch.plan", "second", None))
    assert healthy < planned
