"""Two modeld hosts on one machine (two daemons, two gateways, simulated GPUs), read as
an endpoint picker reads them: each host's /metrics, scored by the rules GIE's
LoRA-affinity scorer documents, with models in place of adapters. A check of our side
of the protocol, not of the EPP itself (none runs here)."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import Fronted, GatewayFactory
from tests.support import make_config

# Each host holds two of these at once (30 + 30 of 80 GB; 40 does not fit beside both).
MODELS: dict[str, dict[str, Any]] = {
    # An alias is one more name in the adapter lists, never one more model.
    "a": {"gpu_memory_gb": 30, "aliases": ["gpt-4o-mini"]},
    "b": {"gpu_memory_gb": 30},
    "c": {"gpu_memory_gb": 30},
    "d": {"gpu_memory_gb": 30},
}


async def lora_info(http: aiohttp.ClientSession, host: Fronted) -> tuple[set[str], set[str], int]:
    """A host's resident models, models on their way, and how many fit at once."""
    async with http.get(host.url + "/metrics") as answer:
        text = await answer.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:lora_requests_info":
                labels = sample.labels
                running = labels["running_lora_adapters"]
                waiting = labels["waiting_lora_adapters"]
                return (
                    set(running.split(",")) if running else set(),
                    set(waiting.split(",")) if waiting else set(),
                    int(labels["max_lora"]),
                )
    raise AssertionError("no vllm:lora_requests_info")


def affinity(model: str, running: set[str], waiting: set[str], max_lora: int) -> float | None:
    """GIE's LoRA-affinity score for one endpoint: resident 1.0, room for one more 0.8,
    on its way 0.6; a full endpoint without it is never chosen (None)."""
    if model in running:
        return 1.0
    if len(running | waiting) < max_lora:
        return 0.8
    if model in waiting:
        return 0.6
    return None


async def pick(http: aiohttp.ClientSession, hosts: dict[str, Fronted], model: str) -> str | None:
    """The host a picker scoring only LoRA affinity would send `model` to (ties: the
    first)."""
    best: tuple[float, str] | None = None
    for name, host in hosts.items():
        score = affinity(model, *await lora_info(http, host))
        if score is not None and (best is None or score > best[0]):
            best = (score, name)
    return best[1] if best else None


async def send(http: aiohttp.ClientSession, host: Fronted, model: str) -> None:
    """One completion for `model` through that host's gateway."""
    body = {"model": model, "prompt": "hi", "max_tokens": 2}
    async with http.post(host.url + "/v1/completions", json=body) as answer:
        assert answer.status == 200, await answer.text()


async def test_requests_go_where_the_model_is_then_where_there_is_room(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """a runs on one host, b on the other: requests for each (a also by its alias) go to
    its host; c goes to a host with room; once the first host is full (a, c), d goes to
    the other, never to the full one; a host made to take a third model evicts one, and
    its metrics say so."""
    hosts = {
        "one": await fronted(make_config(MODELS, [80]), model_server_metrics_without_key=True),
        "two": await fronted(make_config(MODELS, [80]), model_server_metrics_without_key=True),
    }
    await send(http, hosts["one"], "a")
    await send(http, hosts["two"], "b")
    assert await pick(http, hosts, "a") == "one"
    assert await pick(http, hosts, "gpt-4o-mini") == "one"  # requests by alias too
    assert await pick(http, hosts, "b") == "two"
    chosen = await pick(http, hosts, "c")
    assert chosen == "one"  # both have room (a's alias takes none): the first, by the tie rule
    await send(http, hosts[chosen], "c")
    assert (await lora_info(http, hosts["one"]))[0] == {"a", "gpt-4o-mini", "c"}
    # Host one is full (2 of 2) and lacks d: d goes to two, which has room.
    assert await pick(http, hosts, "d") == "two"
    await send(http, hosts["two"], "d")
    assert (await lora_info(http, hosts["two"]))[0] == {"b", "d"}
    # Both full now: a request for a model neither holds has nowhere good to go.
    assert await pick(http, hosts, "a") == "one"
    only_two = {name: host for name, host in hosts.items() if name == "two"}
    assert await pick(http, only_two, "a") is None
    # Sent there anyway, the host evicts one of its two for it, and says so.
    await send(http, hosts["two"], "a")
    running, waiting, _ = await lora_info(http, hosts["two"])
    assert {"a", "gpt-4o-mini"} <= running and len(running & {"b", "d"}) == 1
    assert waiting == set()
