"""Honest loading in streams: headers at once, comments while the model loads, then the
answer; a load that fails arrives as an error the openai package raises."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from modeld.core.states import State
from modeld.gateway.loading import COMMENT_EVERY_S
from modeld.testing.fakes import Behaviour
from tests.gateway.conftest import KEY, GatewayFactory
from tests.gateway.test_openai import client
from tests.support import make_config, state_of

AUTH = {"Authorization": f"Bearer {KEY}"}
MODELS = {"slow": {"gpu_memory_gb": 30, "load_time_seconds": 5}, "bad": {"gpu_memory_gb": 30}}
LOAD_S = 5.0
CHAT = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_a_stream_for_a_loading_model_gets_bytes_before_the_model_answers(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The headers and a first `: modeld loading` comment arrive before the model runs
    (at once), more comments follow while it loads (their cadence is bench.gateway's
    figure), then the answer's events and [DONE]."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    front.runtime.behaviour["slow"] = Behaviour(load_seconds=LOAD_S)
    async with http.post(
        front.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
    ) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert state_of(front.engine, "slow") is not State.RUNNING
        lines: list[bytes] = []
        async for line in answer.content:
            if not lines:
                assert line.startswith(b": modeld loading slow")
                assert state_of(front.engine, "slow") is not State.RUNNING
            lines.append(line)
    first_data = next(i for i, line in enumerate(lines) if line.startswith(b"data: "))
    comments = [line for line in lines[:first_data] if line.startswith(b": modeld loading")]
    assert len(comments) >= LOAD_S // COMMENT_EVERY_S  # one at once, then one per period
    assert any(b"% ~" in line for line in comments)  # progress from the estimate
    data = [line for line in lines if line.startswith(b"data: ")]
    assert data[-1].strip() == b"data: [DONE]"
    chunks = [json.loads(line[6:]) for line in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "slow ok"


async def test_the_openai_package_reads_the_answer_after_the_comments(
    fronted: GatewayFactory,
) -> None:
    """Comments are invisible to the openai package: the stream reads as usual."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    front.runtime.behaviour["slow"] = Behaviour(load_seconds=2.5)
    async with client(front.url) as api:
        stream = await api.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p for p in pieces if p) == "slow ok"


async def test_a_load_that_fails_after_the_headers_is_an_error_the_openai_package_raises(
    fronted: GatewayFactory,
) -> None:
    """The backend exits while loading: the headers went out already, so the failure is
    an error event; the openai package raises it with the daemon's message and code."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    front.runtime.behaviour["bad"] = Behaviour(load_seconds=1.0, exit_code=3)
    async with client(front.url) as api:
        stream = await api.chat.completions.create(
            model="bad", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError) as caught:
            async for _ in stream:
                pass
    assert "exited with code 3" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "load_failed"


async def test_a_model_that_runs_streams_as_before(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """No comment for a model already running: the backend's own headers and events."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    await front.engine.models.switch("slow")
    async with http.post(
        front.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
    ) as answer:
        body = await answer.read()
    assert b": modeld loading" not in body and body.rstrip().endswith(b"data: [DONE]")


async def test_asked_for_the_progress_comes_as_reasoning_text_the_openai_package_reads(
    fronted: GatewayFactory,
) -> None:
    """With `X-Modeld-Progress: reasoning`, the wait is told in chunks whose delta carries
    `reasoning_content` (named by the alias asked for), before the answer's content; the
    openai package reads both. Without the header no such chunk is sent (the default)."""
    config = make_config(MODELS, [80])
    config.models["slow"].aliases.append("gpt-4o")
    front = await fronted(config, api_keys=[KEY])
    front.runtime.behaviour["slow"] = Behaviour(load_seconds=2.5)
    async with client(front.url) as api:
        stream = await api.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            stream=True,
            extra_headers={"X-Modeld-Progress": "reasoning"},
        )
        chunks = [c async for c in stream if c.choices]
    thinking = [
        c for c in chunks if (c.choices[0].delta.model_extra or {}).get("reasoning_content")
    ]
    assert thinking, "no progress chunk"
    first = thinking[0]
    assert first.model == "gpt-4o"
    assert (first.choices[0].delta.model_extra or {})["reasoning_content"].startswith(
        "modeld: loading slow"
    )
    answer_at = next(i for i, c in enumerate(chunks) if c.choices[0].delta.content)
    assert chunks.index(first) < answer_at
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "slow ok"

    await front.engine.models.stop("slow")
    async with client(front.url) as api:
        stream = await api.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
        )
        plain = [c async for c in stream if c.choices]
    assert not [c for c in plain if (c.choices[0].delta.model_extra or {}).get("reasoning_content")]
