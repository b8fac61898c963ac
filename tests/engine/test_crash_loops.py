"""A prompt that kills its engine, retried: the model is started again for the first
retries, then held failed (a crash loop) with the sizes of the requests it died under,
and further requests are refused at once instead of restarting it for each retry; an
operator's start lets it run again. Against the fake vLLM, whose engine dies on a
prompt over N tokens as vLLM's has (vLLM issue 52871)."""

from __future__ import annotations

import aiohttp
import pytest

from modeld.core.errors import CrashLooping
from modeld.core.states import State
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour
from tests.support import EngineFactory, make_config, next_of, state_of

OWNER = 7
LONG = " ".join(["word"] * 500)
TABLE = {
    "gpu_memory_gb": 40,
    "restart": "on-failure",
    "restart_max_retries": 2,
    "restart_backoff_s": 0.05,
    "probe_timeout_s": 1,
}


async def send_killer(engine: Engine, http: aiohttp.ClientSession, size: int) -> None:
    """What a retrying router does: a lease (saying the request's size), the request,
    the lease given back once the backend broke off."""
    granted = await engine.leases.acquire("a", owner=OWNER, timeout=10, request_bytes=size)
    try:
        with pytest.raises(aiohttp.ClientError):
            async with http.post(
                f"{granted.endpoint}/v1/completions", json={"model": "a", "prompt": LONG}
            ) as answer:
                await answer.read()
    finally:
        # As the gateway does: its backend broke the answer off.
        engine.leases.release(granted.lease, owner=OWNER, broken=True)


async def test_a_prompt_that_kills_the_engine_is_held_after_the_retries(
    engines: EngineFactory,
) -> None:
    """restart_max_retries 2: three deaths in a row during requests hold the model
    failed, naming the requests' sizes; the next request is refused (crash_loop) and
    starts nothing; an operator's start runs it again, and short prompts are answered."""
    config = make_config({"a": TABLE}, [80], poll_interval_s=0.05)
    engine, runtime, _ = await engines(config)
    runtime.behaviour["a"] = Behaviour(dies_over_tokens=100)
    events = engine.events.subscribe()
    async with aiohttp.ClientSession() as http:
        for attempt in range(3):
            await send_killer(engine, http, 4000 + attempt)
            await next_of(events, "state", model="a", to_state="failed")
        with pytest.raises(CrashLooping) as refused:
            await engine.leases.acquire("a", owner=OWNER, timeout=10, request_bytes=4100)
    assert refused.value.data["deaths"] == 3
    assert refused.value.data["request_bytes"] == [[4000], [4001], [4002]]
    view = engine.view.status().models["a"]
    assert view.status == "failed" and view.failure is not None
    assert view.failure.reason.startswith("crash loop: died 3 times in a row")
    assert "4000 B; 4001 B; 4002 B" in view.failure.reason
    assert view.restart is not None and view.restart.gave_up
    assert runtime.starts("a") == 3  # the refused request started nothing
    assert state_of(engine, "a") is State.FAILED

    assert (await engine.models.start("a")).state == "running"  # the operator
    granted = await engine.leases.acquire("a", owner=OWNER, timeout=10)
    engine.leases.release(granted.lease, owner=OWNER)


async def test_deaths_apart_from_requests_do_not_make_a_loop(engines: EngineFactory) -> None:
    """restart_max_retries 0 (one death during a request would hold it): a backend that
    dies with no request in flight is only failed, and the next request loads it."""
    table = TABLE | {"restart": "no", "restart_max_retries": 0}
    engine, runtime, _ = await engines(make_config({"a": table}, [80], poll_interval_s=0.05))
    events = engine.events.subscribe()
    for _ in range(2):
        granted = await engine.leases.acquire("a", owner=OWNER, timeout=10, request_bytes=9)
        engine.leases.release(granted.lease, owner=OWNER)
        await runtime.kill_behind_back("a", exit_code=1)
        await next_of(events, "state", model="a", to_state="failed")
        assert engine.view.status().models["a"].restart.gave_up is False
    assert runtime.starts("a") == 2
