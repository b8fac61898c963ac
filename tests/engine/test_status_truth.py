"""What status and the events say stays true between state changes: memory the driver
frees after a stop is announced, and a loading model's health reads `loading`."""

from __future__ import annotations

from modeld.core.states import State
from modeld.testing.fakes import Behaviour
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
    assert freed["devices"] == [{"index": 0, "used_gb": 0.0, "free_gb": 80.0}]
    assert engine.view.status()["gpu"]["available_gb"] == 80.0
    quiet = engine.events.subscribe()
    await engine.poll_once()  # nothing moved
    await engine.models.switch("b")
    assert (await quiet.next())["type"] == "switch.plan"


async def test_a_loading_models_health_reads_loading(engines: EngineFactory) -> None:
    """While vLLM loads its /health is refused by design: status says `loading`, then
    `healthy` once it answers."""
    engine, runtime, _ = await engines(make_config(MODELS, [80]))
    runtime.behaviour["a"] = Behaviour(load_seconds=1.0)
    await engine.models.switch("a", wait=False)
    await engine.poll_once()
    assert engine.view.status()["models"]["a"]["health"] == "loading"
    await wait_for_state(engine, "a", {State.RUNNING}, timeout=10)
    assert engine.view.status()["models"]["a"]["health"] == "healthy"
