"""Backends trusted when they answer a token: a load or a wake whose engine hangs
(/health 200, no token) fails instead of being announced running; a running model that
stops answering is found idle by its probe and failed, and its restart policy applies;
probes are not activity. Against the fake vLLM, which can hang as vLLM's engine does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from modeld.core.errors import LoadFailed
from modeld.core.states import State
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.wire.events import StateChanged
from tests.support import EngineFactory, make_config, next_of, state_of, wait_for_state

QUICK = {"probe_timeout_s": 0.3}


async def test_a_load_whose_engine_hangs_fails_instead_of_running(
    engines: EngineFactory,
) -> None:
    """/health answers 200 but no token comes: the switch fails, saying so, the model is
    failed (never announced running) and its backend stopped."""
    engine, runtime, _ = await engines(make_config({"a": {"gpu_memory_gb": 40, **QUICK}}, [80]))
    runtime.behaviour["a"] = Behaviour(hangs=True)
    events = engine.events.subscribe()
    with pytest.raises(LoadFailed, match=r"engine not answering: no token in 0\.3 s"):
        await engine.models.switch("a")
    view = engine.view.status().models["a"]
    assert view.status == "failed" and view.failure is not None
    assert view.failure.reason.endswith("though /health answers 200")
    assert view.health == "healthy"  # what /health said: exactly what was not enough
    while (event := await events.next()).type == "state":
        assert getattr(event, "to_state", None) != "running"
        if getattr(event, "to_state", None) == "failed":
            break
    assert ("stop", "a") in runtime.events


async def test_a_model_probed_by_health_alone_is_trusted_on_health(
    engines: EngineFactory,
) -> None:
    """`probe = "health"` (a backend that cannot take a completion): /health 200 is
    enough, as before probes."""
    config = make_config({"a": {"gpu_memory_gb": 40, "probe": "health", **QUICK}}, [80])
    engine, runtime, _ = await engines(config)
    runtime.behaviour["a"] = Behaviour(hangs=True)
    assert (await engine.models.switch("a")).state == "running"


async def test_an_embedding_model_is_probed_with_an_embedding(engines: EngineFactory) -> None:
    """`probe = "embedding"`: a one-input embedding; it answers, so it runs; hung, it
    fails like a completion model."""
    config = make_config({"e": {"gpu_memory_gb": 40, "probe": "embedding", **QUICK}}, [80])
    engine, runtime, _ = await engines(config)
    assert (await engine.models.switch("e")).state == "running"
    await engine.models.stop("e")
    runtime.behaviour["e"] = Behaviour(hangs=True)
    with pytest.raises(LoadFailed, match=r"no embedding in 0\.3 s"):
        await engine.models.switch("e")


async def test_an_idle_model_that_stops_answering_is_failed_and_restarted(
    engines: EngineFactory,
) -> None:
    """Running, idle past probe_interval_s, its engine hangs: the monitor's probe fails
    it with the reason, and restart = "on-failure" starts it again, answering."""
    table = {
        "gpu_memory_gb": 40,
        "probe_interval_s": 0.2,
        "restart": "on-failure",
        "restart_backoff_s": 0.05,
        **QUICK,
    }
    engine, runtime, _ = await engines(make_config({"a": table}, [80]))
    await engine.models.switch("a")
    runtime.engine_hangs("a")
    events = engine.events.subscribe()
    async with polling(engine):  # the probe is due once it has idled probe_interval_s
        failed = await next_of(events, "state", model="a", to_state="failed")
    assert isinstance(failed, StateChanged) and failed.failure is not None
    assert failed.failure.startswith("engine not answering: no token in 0.3 s")
    assert await wait_for_state(engine, "a", {State.RUNNING}, 10) is State.RUNNING
    assert runtime.starts("a") == 2


async def test_a_failed_engine_that_still_says_healthy_is_not_adopted_again(
    engines: EngineFactory,
) -> None:
    """Failed for answering no token, its backend still up and /health 200: the monitor
    keeps it failed (a failed backend is adopted again only once it answers a token),
    and adopts it once its engine answers again."""
    table = {"gpu_memory_gb": 40, "probe_interval_s": 0.2, **QUICK}
    engine, runtime, _ = await engines(make_config({"a": table}, [80]))
    await engine.models.switch("a")
    runtime.engine_hangs("a")
    while state_of(engine, "a") is not State.FAILED:
        await engine.poll_once()
    await engine.poll_once()
    assert state_of(engine, "a") is State.FAILED
    runtime.engine_hangs("a", False)
    await engine.poll_once()
    assert await wait_for_state(engine, "a", {State.RUNNING}, 10) is State.RUNNING
    assert runtime.starts("a") == 1


async def test_probes_are_not_use(
    engines: EngineFactory,
) -> None:
    """A probe answered is no request: a model probed at every poll is still unloaded
    once idle for idle_unload_after_s."""
    table = {"gpu_memory_gb": 20, "idle_unload_after_s": 0.6, "probe_interval_s": 0.05}
    engine, runtime, _ = await engines(make_config({"a": table}, [80], poll_interval_s=0.05))
    await engine.models.switch("a")
    assert await wait_for_state(engine, "a", {State.STOPPED}, 10) is State.STOPPED
    assert runtime.starts("a") == 1


async def test_a_wake_whose_engine_hangs_falls_back_to_a_cold_start(
    engines: EngineFactory,
) -> None:
    """Parked, then its engine hangs: the wake's probe gets no token, so modeld stops it
    and starts it cold instead, saying why (wake_fallback)."""
    models = {
        name: {"gpu_memory_gb": 50, "size_gb": 40, "sleep_mode": True, **QUICK}
        for name in ("a", "b")
    }
    engine, runtime, _ = await engines(make_config(models, [80], park_ram_gb=100))
    await engine.models.switch("a")
    await engine.models.switch("b")  # parks a
    assert state_of(engine, "a") is State.SLEEPING
    runtime.engine_hangs("a")
    result = await engine.models.switch("a")
    assert result.state == "running" and result.woke is False
    assert result.wake_fallback is not None and "engine not answering" in result.wake_fallback
    assert runtime.starts("a") == 2


async def test_a_model_that_wakes_wrong_is_restarted_cold(engines: EngineFactory) -> None:
    """The wake canary: parked, then woken answering a greedy token other than before it
    slept (vLLM has woken corrupted, answering without failing): checked once more, then
    stopped and started cold, the history saying "woke wrong: ... restarted cold"; it
    answers as loaded again."""
    models = {
        name: {"gpu_memory_gb": 50, "size_gb": 40, "sleep_mode": True, **QUICK}
        for name in ("a", "b")
    }
    engine, runtime, _ = await engines(make_config(models, [80], park_ram_gb=100))
    runtime.behaviour["a"] = Behaviour(wakes_wrong=True)
    await engine.models.switch("a")
    loaded = engine.view.status().models["a"]
    await engine.models.switch("b")  # parks a
    result = await engine.models.switch("a")
    assert result.state == "running" and result.woke is False
    assert result.wake_fallback is not None
    assert result.wake_fallback.startswith("woke wrong: answered ' garbled' where it answered 'a'")
    assert runtime.starts("a") == 2
    reasons = [entry.reason for entry in engine.models.history("a")]
    assert any(r.startswith("woke wrong") and r.endswith("restarted cold") for r in reasons)
    endpoint = loaded.endpoint
    async with aiohttp.ClientSession() as http:
        body = {"model": "a", "prompt": "hi", "max_tokens": 1, "temperature": 0}
        async with http.post(f"{endpoint}/v1/completions", json=body) as answer:
            assert (await answer.json())["choices"][0]["text"] == "a"


async def stalling(engines: EngineFactory, stall_after_s: float) -> tuple[Engine, FakeRuntime]:
    """A running model probed on stalls only (no idle probe), its endpoint's fake vLLM."""
    table = {"gpu_memory_gb": 40, "stall_after_s": stall_after_s, "probe_interval_s": None}
    engine, runtime, _ = await engines(make_config({"a": {**table, **QUICK}}, [80]))
    await engine.models.switch("a")
    return engine, runtime


async def test_requests_that_stop_moving_get_the_model_probed_at_once(
    engines: EngineFactory,
) -> None:
    """No idle probe: a request waits on a hung engine, its /metrics show it in flight
    with no token for stall_after_s, so a poll probes at once; no token: failed, saying
    so."""
    engine, runtime = await stalling(engines, 0.3)
    runtime.engine_hangs("a")
    endpoint = engine.view.status().models["a"].endpoint
    events = engine.events.subscribe()
    async with aiohttp.ClientSession() as http:
        body = {"prompt": "hi", "max_tokens": 4}
        waiting = asyncio.create_task(http.post(f"{endpoint}/v1/completions", json=body))
        async with polling(engine):
            failed = await next_of(events, "state", model="a", to_state="failed")
        assert isinstance(failed, StateChanged) and failed.failure is not None
        assert "engine not answering" in failed.failure
        waiting.cancel()


async def test_requests_that_move_are_not_a_stall(engines: EngineFactory) -> None:
    """A slow stream that keeps generating tokens is never probed as a stall, however
    long it runs: once it has begun, the engine hangs for anything new (so any probe
    would fail the model), and a poll follows every other token until it ends."""
    engine, runtime = await stalling(engines, 0.2)
    runtime.server("a").token_seconds = 0.05
    endpoint = engine.view.status().models["a"].endpoint
    body = {"prompt": "hi", "max_tokens": 40, "stream": True}
    tokens = 0
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{endpoint}/v1/completions", json=body) as stream,
    ):
        async for line in stream.content:
            if not line.startswith(b"data: {"):
                continue
            tokens += 1
            if tokens == 1:
                runtime.engine_hangs("a")
            if tokens % 2 == 0:
                await engine.poll_once()
    assert tokens > 20  # it ran past stall_after_s many times over
    assert state_of(engine, "a") is State.RUNNING


@contextlib.asynccontextmanager
async def polling(engine: Engine) -> AsyncIterator[None]:
    """The monitor's passes, one after another, for the block."""

    async def passes() -> None:
        while True:
            await engine.poll_once()
            await asyncio.sleep(0)  # a pass that awaited nothing still lets others run

    task = asyncio.create_task(passes())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
