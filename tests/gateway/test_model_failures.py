"""Requests in flight on a model that fails end at once with an error: its engine hung
(/health 200, no token), the daemon's stall probe failed it, and the gateway ends what
waited on it instead of leaving each caller until max_request_s."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from modeld.testing.fakes import Behaviour
from tests.gateway.conftest import KEY, GatewayFactory
from tests.gateway.test_team import bearer
from tests.support import eventually, make_config, next_of

# Probed once its requests have not moved for 0.3 s; polled often; never restarted.
HANGS = {
    "gpu_memory_gb": 40,
    "stall_after_s": 0.3,
    "probe_interval_s": None,
    "probe_timeout_s": 0.3,
}


async def test_requests_on_a_hung_engine_end_with_the_failure(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A stream that had tokens when its engine hung, and a request sent after: the
    model is failed by its stall probe, the stream ends abruptly (never as if whole) and
    is recorded as 502 model_failed, the other is answered 502 model_failed with the
    probe's words; both leases are given back."""
    config = make_config({"a": HANGS}, [80], poll_interval_s=0.05)
    front = await fronted(config, api_keys=[KEY], max_request_s=600)
    await front.engine.models.switch("a")
    front.runtime.server("a").hang_after_tokens = 2
    url = front.url + "/v1/completions"
    streamed = {"model": "a", "prompt": "hi", "max_tokens": 20, "stream": True}
    async with http.post(url, json=streamed, headers=bearer(KEY)) as stream:
        assert stream.status == 200
        await stream.content.readuntil(b"\n\n")  # a token came: the answer has begun
        plain = asyncio.create_task(
            http.post(url, json={"model": "a", "prompt": "hi"}, headers=bearer(KEY))
        )
        with pytest.raises(aiohttp.ClientPayloadError):
            await stream.read()
    async with await plain as refused:
        assert refused.status == 502
        error = (await refused.json())["error"]
    assert error["code"] == "model_failed"
    assert "engine not answering: no token in 0.3 s" in error["message"]
    assert front.engine.view.status().models["a"].status == "failed"

    async def given_back() -> bool:
        return front.leases("a") == 0

    await eventually(given_back)
    async with http.get(front.url + "/v1/requests", headers=bearer(KEY)) as answer:
        kept = [r for r in (await answer.json())["requests"] if r["model"] == "a"]
    assert sorted((r["streamed"], r["status"], r["error"]) for r in kept) == [
        (False, 502, "model_failed"),
        (True, 502, "model_failed"),
    ]


async def test_a_retried_prompt_that_kills_its_engine_ends_in_a_crash_loop_refusal(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A client retries a prompt that kills the engine: each try is cut off (502) and
    loads the model again, until its deaths in a row pass restart_max_retries; then the
    gateway answers 503 crash_loop at once, naming the request's size, and loads
    nothing more."""
    table = {"gpu_memory_gb": 40, "restart_max_retries": 1, "probe_timeout_s": 1}
    front = await fronted(make_config({"a": table}, [80], poll_interval_s=0.05), api_keys=[KEY])
    front.runtime.behaviour["a"] = Behaviour(dies_over_tokens=100)
    body = {"model": "a", "prompt": " ".join(["word"] * 500)}
    size = len(json.dumps(body).encode())
    events = front.engine.events.subscribe()
    statuses = []
    for _ in range(2):
        async with http.post(front.url + "/v1/completions", json=body, headers=bearer(KEY)) as cut:
            statuses.append(cut.status)
        await next_of(events, "state", model="a", to_state="failed")
    async with http.post(front.url + "/v1/completions", json=body, headers=bearer(KEY)) as held:
        assert held.status == 503
        error = (await held.json())["error"]
    assert statuses == [502, 502]
    assert error["code"] == "crash_loop"
    assert "died 2 times in a row" in error["message"] and f"{size} B; {size} B" in error["message"]
    assert front.runtime.starts("a") == 2
