"""The official `openai` package as the client: answers from two models that cannot
share the GPU, switching by the request's model; streams are never cut by a request
for another model."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from modeld.core.states import State
from tests.gateway.conftest import KEY, GatewayFactory
from tests.support import eventually, make_config, next_of, state_of

# Two models that cannot share the 80 GB GPU.
TWO = {"a": {"gpu_memory_gb": 50}, "b": {"gpu_memory_gb": 50}}


def client(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    """The openai package pointed at the gateway."""
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def test_chat_completions_switch_by_the_requests_model(fronted: GatewayFactory) -> None:
    """Non-streamed and streamed chat completions reach the model each request names;
    asking for the other model switches the GPU over (a stops, b starts)."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    async with client(front.url) as api:
        first = await api.chat.completions.create(
            model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert first.model == "a"
        assert first.choices[0].message.content == "a ok ok"
        assert state_of(front.engine, "a") is State.RUNNING

        stream = await api.chat.completions.create(
            model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
        assert "".join(p for p in pieces if p) == "b ok ok ok"
        assert state_of(front.engine, "a") is State.STOPPED
        assert state_of(front.engine, "b") is State.RUNNING

        completion = await api.completions.create(model="a", prompt="x", max_tokens=2)
        assert completion.choices[0].text == "a ok"
        embedded = await api.embeddings.create(model="a", input=["one", "two"])
        assert [item.index for item in embedded.data] == [0, 1]

    async def released() -> bool:  # just after each answer's last byte
        return front.leases("a") == 0 and front.leases("b") == 0

    await eventually(released, timeout=10)


async def test_a_stream_is_never_cut_by_a_request_for_another_model(
    fronted: GatewayFactory,
) -> None:
    """While a's answer streams, a request for b waits (a is drained, not stopped); a's
    stream ends whole, then b loads and answers."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    events = front.engine.events.subscribe()
    async with client(front.url) as api:
        await api.completions.create(model="a", prompt="warm", max_tokens=1)
        front.runtime.server("a").token_seconds = 0.01
        stream = await api.chat.completions.create(
            model="a", messages=[{"role": "user", "content": "long"}], max_tokens=50, stream=True
        )
        chunks = aiter(stream)
        assert (await anext(chunks)).choices[0].delta.role == "assistant"
        other = asyncio.create_task(
            api.chat.completions.create(
                model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        )
        await next_of(events, "drain", model="a")  # b's request waits for a's stream
        assert state_of(front.engine, "a") is State.RUNNING
        rest = [chunk async for chunk in chunks]
        assert rest[-1].choices[0].finish_reason == "stop"
        text = "".join(c.choices[0].delta.content or "" for c in rest)
        assert text == "a" + " ok" * 49
        answer = await asyncio.wait_for(other, 30)
    assert answer.model == "b"
    assert state_of(front.engine, "a") is State.STOPPED


async def test_errors_come_in_openais_shape(fronted: GatewayFactory) -> None:
    """Unknown model: 404 NotFoundError; no key or a wrong one: 401; a model that cannot
    be loaded: 503 with the daemon's reason."""
    # 75 GB fits the 80 GB GPU alone, not beside the 10 GB a process outside modeld holds.
    config = make_config(
        {**TWO, "huge": {"gpu_memory_gb": 75}}, [80], gpu={"external_used_gb": [10]}
    )
    front = await fronted(config, api_keys=[KEY])
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    async with client(front.url) as api:
        with pytest.raises(openai.NotFoundError) as unknown:
            await api.chat.completions.create(model="nope", messages=messages)
        assert unknown.value.code == "unknown_model"
        with pytest.raises(openai.InternalServerError) as too_big:
            await api.chat.completions.create(model="huge", messages=messages)
        assert too_big.value.status_code == 503
        assert too_big.value.code == "insufficient_memory"
    async with client(front.url, key="sk-wrong-0000000000") as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
    assert front.runtime.starts("huge") == 0


async def test_models_lists_every_configured_model_with_its_state(
    fronted: GatewayFactory,
) -> None:
    """`models.list()` has every configured model, loaded or not, with modeld's state;
    `models.retrieve()` one of them."""
    front = await fronted(make_config(TWO, [80]))
    await front.engine.models.switch("a")
    async with client(front.url, key="unused") as api:
        listed = {model.id: model.model_extra or {} for model in (await api.models.list()).data}
    assert set(listed) == {"a", "b"}
    assert listed["a"]["status"] == "running" and listed["b"]["status"] == "stopped"
    assert listed["a"]["gpu_memory_required_gb"] == 50.0
    async with client(front.url, key="unused") as api:
        one = await api.models.retrieve("b")
        assert one.id == "b" and (one.model_extra or {})["status"] == "stopped"
        with pytest.raises(openai.NotFoundError):
            await api.models.retrieve("nope")
