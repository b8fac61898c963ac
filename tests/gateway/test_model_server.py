"""modeld-gateway's /metrics speaks the GIE model-server protocol: what an endpoint
picker reads to choose this host (queue, KV cache, models resident and on their way),
following every load, queue and eviction."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from modeld.core.states import State
from modeld.testing.fakes import Behaviour
from tests.gateway.conftest import KEY, Fronted, GatewayFactory
from tests.support import eventually, make_config, state_of, wait_for_state

# 30 + 30 fit on 80 GB, a third (40) does not: two models at once.
MODELS: dict[str, dict[str, Any]] = {
    "a": {"gpu_memory_gb": 30, "aliases": ["gpt-4o-mini"]},
    "b": {"gpu_memory_gb": 40},
    "c": {"gpu_memory_gb": 30},
}


async def protocol(http: aiohttp.ClientSession, front: Fronted) -> dict[str, Any]:
    """The protocol's values from one scrape (no key: metrics_without_key)."""
    async with http.get(front.url + "/metrics") as answer:
        assert answer.status == 200
        text = await answer.text()
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:lora_requests_info":
                found["info"] = (sample.labels, sample.value)
            elif sample.name.startswith("vllm:"):
                found[sample.name] = sample.value
    return found


def adapters(found: dict[str, Any], which: str) -> set[str]:
    """running_lora_adapters or waiting_lora_adapters, as a set of names."""
    value = found["info"][0][f"{which}_lora_adapters"]
    return set(value.split(",")) if value else set()


def room(found: dict[str, Any]) -> bool:
    """Whether GIE's LoRA-affinity scorer sees room for one more model: fewer names in
    both lists than max_lora (its rule, in its units)."""
    listed = len(adapters(found, "running")) + len(adapters(found, "waiting"))
    return listed < int(found["info"][0]["max_lora"])


async def test_the_protocol_follows_loads_queues_and_evictions(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Nothing resident, then a (and its alias) resident; b loading and a request queued
    for it show as waiting; once b runs both are resident; c evicts the largest, b.
    Two models fit: the scorer sees room until two are resident or on their way,
    whatever their aliases; the info gauge's value moves only when the sets change."""
    front = await fronted(make_config(MODELS, [80]), metrics_without_key=True)
    idle = await protocol(http, front)
    assert idle["vllm:num_requests_waiting"] == 0 and idle["vllm:num_requests_running"] == 0
    assert idle["vllm:kv_cache_usage_perc"] == 0
    assert adapters(idle, "running") == set() and adapters(idle, "waiting") == set()
    assert idle["info"][0]["max_lora"] == "2" and room(idle)

    await front.engine.models.switch("a")
    resident = await protocol(http, front)
    assert adapters(resident, "running") == {"a", "gpt-4o-mini"}
    assert room(resident)  # one model (two names) of two
    assert resident["info"][1] > idle["info"][1]
    assert (await protocol(http, front))["info"][1] == resident["info"][1]  # no change

    front.runtime.behaviour["b"] = Behaviour(load_seconds=1.5)
    queued = asyncio.create_task(front.engine.leases.acquire("b", owner=7))
    await wait_for_state(front.engine, "b", {State.LOADING}, timeout=10)
    loading = await protocol(http, front)
    assert adapters(loading, "waiting") == {"b"} and not room(loading)
    assert loading["vllm:num_requests_waiting"] >= 1  # the request queued for b's load
    lease = await queued
    both = await protocol(http, front)
    assert adapters(both, "running") == {"a", "gpt-4o-mini", "b"}
    assert adapters(both, "waiting") == set() and both["vllm:num_requests_waiting"] == 0
    assert not room(both)
    front.engine.leases.release(lease.lease, owner=7)

    await front.engine.models.switch("c")  # largest_first: b goes
    evicted = await protocol(http, front)
    assert adapters(evicted, "running") == {"a", "gpt-4o-mini", "c"}


async def test_a_parked_model_is_not_resident_and_waking_it_is_on_its_way(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A model parked to make room (vLLM sleep mode) leaves running_lora_adapters, since
    it serves nothing until woken; while it wakes for a request it is waiting; once
    awake it is resident again and the model parked for it has left."""
    parkable = {"sleep_mode": True, "env": {"VLLM_SERVER_DEV_MODE": "1"}}
    models = {
        "a": {**MODELS["a"], **parkable},
        "b": {**MODELS["b"], **parkable},
        "c": {**MODELS["c"], **parkable},
    }
    front = await fronted(make_config(models, [80], park_ram_gb=100), metrics_without_key=True)
    await front.engine.models.switch("a")
    await front.engine.models.switch("b")
    await front.engine.models.switch("c")  # largest_first: b is parked
    assert state_of(front.engine, "b") is State.SLEEPING
    parked = await protocol(http, front)
    assert adapters(parked, "running") == {"a", "gpt-4o-mini", "c"}
    assert adapters(parked, "waiting") == set()

    front.runtime.server("b").wake_seconds = 1.5  # the parked backend's own /wake_up
    queued = asyncio.create_task(front.engine.leases.acquire("b", owner=7))

    async def waking() -> bool:
        return adapters(await protocol(http, front), "waiting") == {"b"}

    await eventually(waking, timeout=5)
    lease = await queued
    awake = await protocol(http, front)
    assert "b" in adapters(awake, "running") and adapters(awake, "waiting") == set()
    assert len(adapters(awake, "running") - {"gpt-4o-mini"}) == 2  # one parked for b
    front.engine.leases.release(lease.lease, owner=7)


async def test_running_requests_and_kv_cache_come_from_the_backends(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Requests in flight on two backends show as running, and the KV cache reported is
    the fullest backend's (two requests on a: 0.5; one on c: 0.25); both fall back to 0
    when the requests end (the monitor reads the backends' /metrics each poll)."""
    config = make_config(MODELS, [80], poll_interval_s=0.1)
    front = await fronted(config, metrics_without_key=True)
    for name in ("a", "c"):
        await front.engine.models.switch(name)
        front.runtime.server(name).request_seconds = 30  # held until the client goes
    body = {"prompt": "hi", "max_tokens": 2}
    calls = [
        asyncio.create_task(http.post(front.url + "/v1/completions", json={**body, "model": m}))
        for m in ("a", "a", "c")
    ]

    async def busy() -> bool:
        found = await protocol(http, front)
        return bool(
            found["vllm:num_requests_running"] == 3 and found["vllm:kv_cache_usage_perc"] == 0.5
        )

    await eventually(busy)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)

    async def quiet() -> bool:
        found = await protocol(http, front)
        return bool(
            found["vllm:num_requests_running"] == 0 and found["vllm:kv_cache_usage_perc"] == 0
        )

    await eventually(quiet)


async def test_a_model_that_cannot_fit_here_is_refused_at_once(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """With 50 GB of the GPU held by a process modeld does not manage, b (40 GB) cannot
    fit even with everything stopped: its request is answered 503 `insufficient_memory`
    with Retry-After at once, so a router tries a host where it fits; a keeps running."""
    config = make_config(MODELS, [80], gpu={"external_used_gb": [50]})
    front = await fronted(config, metrics_without_key=True)
    await front.engine.models.switch("a")
    body = {"model": "b", "prompt": "hi", "max_tokens": 2}
    async with asyncio.timeout(2):
        async with http.post(front.url + "/v1/completions", json=body) as refused:
            assert refused.status == 503
            assert int(refused.headers["Retry-After"]) > 0
            assert (await refused.json())["error"]["code"] == "insufficient_memory"
    assert state_of(front.engine, "a") is State.RUNNING
    assert front.runtime.starts("b") == 0


async def test_the_model_server_families_alone_need_no_key(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """With model_server_metrics_without_key, a scrape with no key (an endpoint picker's)
    gets the vllm:* families alone, never the gateway's own (they name every key); an
    admin key gets both; a wrong key or an inference key is refused, not served less."""
    front = await fronted(
        make_config(MODELS, [80]),
        api_keys=[f"ops {KEY}"],
        inference_keys=["team sk-team-0123456789abcdefgh"],
        model_server_metrics_without_key=True,
    )
    await front.engine.models.switch("a")
    async with http.get(front.url + "/metrics") as open_:
        assert open_.status == 200
        names = {f.name for f in text_string_to_metric_families(await open_.text())}
    assert names == {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:lora_requests_info",
    }
    admin = {"Authorization": f"Bearer {KEY}"}
    async with http.get(front.url + "/metrics", headers=admin) as full:
        text = await full.text()
    assert "vllm:lora_requests_info" in text and "modeld_gateway_requests_total" in text
    for key, status in (("sk-wrong-0123456789", 401), ("sk-team-0123456789abcdefgh", 403)):
        refused = {"Authorization": f"Bearer {key}"}
        async with http.get(front.url + "/metrics", headers=refused) as answer:
            assert answer.status == status
    async with http.get(front.url + "/v1/models") as models:
        assert models.status == 401  # nothing else opens


async def test_a_full_queue_is_refused_at_once_so_a_router_tries_another_host(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """With max_queue = 1, a second request that would wait for b's load is answered
    503 `queue_full` with Retry-After at once (no wait), and changes nothing; the first
    is served; a model that runs is never refused for the queue."""
    front = await fronted(make_config(MODELS, [80]), max_queue=1)
    await front.engine.models.switch("a")
    front.runtime.behaviour["b"] = Behaviour(load_seconds=1.5)
    body = {"model": "b", "prompt": "hi", "max_tokens": 2}
    first = asyncio.create_task(http.post(front.url + "/v1/completions", json=body))
    await wait_for_state(front.engine, "b", {State.LOADING}, timeout=10)
    async with asyncio.timeout(1):  # at once, not after the load
        async with http.post(front.url + "/v1/completions", json=body) as refused:
            assert refused.status == 503
            assert refused.headers["Retry-After"] == "5"
            assert (await refused.json())["error"]["code"] == "queue_full"
    ran = {"model": "a", "prompt": "hi", "max_tokens": 2}
    async with http.post(front.url + "/v1/completions", json=ran) as served:
        assert served.status == 200  # a running model's request waits for nothing
    async with await first as answered:
        assert answered.status == 200
    assert front.runtime.starts("b") == 1
