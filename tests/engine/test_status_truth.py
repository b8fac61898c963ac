"""What status and the events say stays true between state changes: memory the driver
frees after a stop is announced, and a loading model's health reads `loading`."""

from __future__ import annotations

import aiohttp

from modeld.core.states import State
from modeld.testing.fakes import Behaviour
from modeld.wire.events import GpuMemory
from tests.support import EngineFactory, make_config, next_of, wait_for_state

MODELS = {"a": {"gpu_memory_gb": 30}, "b": {"gpu_memory_gb": 20}}


async def test_memory_freed_after_a_stop_is_announced(engines: EngineFactory) -> None:
    """A stop changes the model's state at once; the memory shows as free only once the
    driver has let go, at a later reading: that reading publishes `gpu.memory` with the
    new figures (what status shows). A reading that moved nothing publishes nothing."""
    engine, _, _ = await engines(make_config(MODELS, [80]))
    await engine.models.switch("a")
    await engine.poll_once()
    events = engine.events.subscribe()
    await engine.models.stop("a")
    await engine.poll_once()
    freed = await next_of(events, "gpu.memory")
    assert isinstance(freed, GpuMemory)
    assert [d.model_dump() for d in freed.devices] == [
        {"index": 0, "used_gb": 0.0, "free_gb": 80.0}
    ]
    assert engine.view.status().gpu.available_gb == 80.0
    quiet = engine.events.subscribe()
    await engine.poll_once()  # nothing moved
    await engine.models.switch("b")
    assert (await quiet.next()).type == "switch.plan"


async def test_a_loading_models_health_reads_loading(engines: EngineFactory) -> None:
    """While vLLM loads its /health is refused by design: status says `loading`, then
    `healthy` once it answers."""
    engine, runtime, _ = await engines(make_config(MODELS, [80]))
    runtime.behaviour["a"] = Behaviour(load_seconds=1.0)
    await engine.models.switch("a", wait=False)
    await engine.poll_once()
    assert engine.view.status().models["a"].health == "loading"
    await wait_for_state(engine, "a", {State.RUNNING}, timeout=10)
    assert engine.view.status().models["a"].health == "healthy"


async def test_status_says_what_a_running_model_is_doing(engines: EngineFactory) -> None:
    """Requests answered between two polls show as requests and tokens per second (from
    the backend's /metrics); a stopped model has no activity."""
    engine, _, _ = await engines(make_config(MODELS, [80]))
    await engine.models.switch("a")
    await engine.poll_once()
    first = engine.view.status().models["a"].activity
    assert first is not None and first.model_dump() == {
        "in_flight": 0.0,
        "waiting": 0.0,
        "kv_cache_usage": 0.0,
        "requests_per_s": None,
        "tokens_per_s": None,
    }
    endpoint = engine.view.status().models["a"].endpoint
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            body = {"model": "a", "prompt": "hi", "max_tokens": 4}
            async with http.post(f"{endpoint}/v1/completions", json=body) as answer:
                assert answer.status == 200
    await engine.poll_once()
    busy = engine.view.status().models["a"].activity
    assert busy is not None and busy.requests_per_s and busy.tokens_per_s
    assert busy.requests_per_s > 0 and busy.tokens_per_s > 0
    assert busy.tokens_per_s >= busy.requests_per_s * 3.9  # four tokens each, rounded
    assert engine.view.status().models["b"].activity is None
