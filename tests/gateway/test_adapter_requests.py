"""Adapters through the gateway, with the `openai` package as a client sends them: a
request naming an adapter (or its alias) brings its base up and is answered by the
adapter; `/v1/models` lists adapters; vLLM's runtime LoRA endpoints stay out of reach."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai

from modeld.core.states import State
from modeld.testing.fakes import Behaviour
from tests.engine.test_adapters import lora_config
from tests.gateway.conftest import KEY, GatewayFactory
from tests.gateway.test_team import ALICE, INFERENCE, bearer
from tests.support import state_of


async def test_requests_for_adapters_are_answered_by_them(
    fronted: GatewayFactory, tmp_path: Path
) -> None:
    """From cold, `sql` (streamed) then `chat`: one start of the base, each answer is the
    adapter's own; the base answers as itself; the adapters are listed as models."""
    front = await fronted(lora_config(tmp_path))
    api = openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0)
    stream = await api.chat.completions.create(
        model="sql", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == "sql ok"
    done = await api.completions.create(model="chat", prompt="hi", max_tokens=1)
    assert done.model == "chat" and done.choices[0].text == "chat"
    base = await api.completions.create(model="base", prompt="hi", max_tokens=1)
    assert base.choices[0].text == "base"
    assert front.runtime.starts("base") == 1
    assert {state_of(front.engine, n) for n in ("sql", "chat")} == {State.RUNNING}
    listed = {m.id async for m in api.models.list()}
    assert {"base", "sql", "chat", "math"} <= listed
    await api.close()


async def test_vllms_lora_endpoints_are_not_forwarded(
    fronted: GatewayFactory, tmp_path: Path
) -> None:
    """A caller cannot load or unload adapters in a base through the gateway: only modeld
    does, from the paths in its config."""
    front = await fronted(lora_config(tmp_path))
    await front.engine.models.switch("sql")
    async with aiohttp.ClientSession() as http:
        for path, body in (
            ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/etc"}),
            ("/v1/unload_lora_adapter", {"lora_name": "sql"}),
        ):
            async with http.post(front.url + path, json=body) as answer:
                assert answer.status in (404, 405), path
    loras = front.runtime.server("base").loras
    assert loras is not None and list(loras.loaded) == ["sql"]


async def test_a_key_past_its_load_budget_still_gets_adapters_of_a_running_base(
    fronted: GatewayFactory, tmp_path: Path
) -> None:
    """key_loads_per_minute counts loads that move models: a key that spent its one load
    on the base is still served an adapter of it (loaded in a fraction of a second, no
    model moved), but not a model that would stop the base."""
    front = await fronted(
        lora_config(tmp_path),
        api_keys=[KEY],
        inference_keys=INFERENCE,
        key_loads_per_minute=1,
    )
    url = f"{front.url}/v1/completions"
    async with aiohttp.ClientSession() as http:

        async def ask(model: str) -> int:
            body = {"model": model, "prompt": "hi", "max_tokens": 1}
            async with http.post(url, json=body, headers=bearer(ALICE)) as answer:
                return answer.status

        assert await ask("base") == 200  # the key's one load
        assert [await ask(name) for name in ("sql", "chat", "math")] == [200, 200, 200]
        assert await ask("other") == 429
    assert front.runtime.starts("base") == 1


async def test_a_stream_for_an_adapter_of_a_cold_base_counts_the_bases_load(
    fronted: GatewayFactory, tmp_path: Path
) -> None:
    """Streamed, for an adapter whose base is stopped: the loading comments estimate the
    base's load and the adapter's together (about 20 s here, not the adapter's second),
    then the adapter answers."""
    config = lora_config(tmp_path)
    tables = {"load_time_seconds": 20.0}
    base = config.models["base"].model_copy(update=tables)
    front = await fronted(config.model_copy(update={"models": {**config.models, "base": base}}))
    front.runtime.behaviour["base"] = Behaviour(load_seconds=1.0)
    body = {"model": "sql", "prompt": "hi", "max_tokens": 2, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(front.url + "/v1/completions", json=body) as answer,
    ):
        lines = [line async for line in answer.content]
    first = lines[0].decode()
    assert first.startswith(": modeld loading sql") and "~2" in first  # ~20 s or ~21 s left
    data = [json.loads(line[6:]) for line in lines if line.startswith(b"data: {")]
    assert "".join(c["choices"][0]["text"] for c in data) == "sql ok"
