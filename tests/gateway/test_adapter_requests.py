"""Adapters through the gateway, with the `openai` package as a client sends them: a
request naming an adapter (or its alias) brings its base up and is answered by the
adapter; `/v1/models` lists adapters; vLLM's runtime LoRA endpoints stay out of reach."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai

from modeld.core.states import State
from tests.engine.test_adapters import lora_config
from tests.gateway.conftest import GatewayFactory
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
