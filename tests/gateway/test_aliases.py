"""Aliases: other names a model answers to, through the gateway and the daemon."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from modeld.client import Client
from modeld.core.errors import ConfigError
from modeld.core.states import State
from tests.gateway.conftest import KEY, GatewayFactory
from tests.gateway.test_openai import client
from tests.support import make_config, state_of

MODELS = {
    "chat": {"gpu_memory_gb": 50, "aliases": ["gpt-4o", "chat:latest"]},
    "coder": {"gpu_memory_gb": 50, "served_model_name": "org/coder-7b"},
}
AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_a_client_asking_by_an_alias_gets_the_model(fronted: GatewayFactory) -> None:
    """The openai package asks for `gpt-4o`: the gateway loads `chat` and its backend gets
    the name it serves (so it answers); asking by the name shares the same model."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    async with client(front.url) as api:
        answer = await api.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert answer.choices[0].message.content == "chat ok"
        assert state_of(front.engine, "chat") is State.RUNNING
        stream = await api.chat.completions.create(
            model="chat:latest",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            stream=True,
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p for p in pieces if p) == "chat ok"
        assert front.runtime.starts("chat") == 1  # one model, however it is named
        with pytest.raises(openai.NotFoundError):
            await api.chat.completions.create(
                model="gpt-5", messages=[{"role": "user", "content": "hi"}]
            )


async def test_models_lists_aliases_as_aliases(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`/v1/models` lists each alias beside its model, marked `alias_of`; retrieving an
    alias answers with it."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    async with client(front.url) as api:
        listed = {m.id: m for m in (await api.models.list()).data}
    assert set(listed) == {"chat", "gpt-4o", "chat:latest", "coder"}
    assert (listed["gpt-4o"].model_extra or {})["alias_of"] == "chat"
    assert "alias_of" not in (listed["chat"].model_extra or {})
    async with http.get(front.url + "/v1/models/gpt-4o", headers=AUTH) as answer:
        retrieved = await answer.json()
    assert retrieved["id"] == "gpt-4o" and retrieved["alias_of"] == "chat"


async def test_the_daemons_methods_take_aliases(fronted: GatewayFactory) -> None:
    """switch, acquire and stop by an alias act on the model, and answer with its name."""
    front = await fronted(make_config(MODELS, [80]))
    async with Client(front.socket) as daemon:
        switched = await daemon.call("switch", model="gpt-4o")
        assert switched["model"] == "chat"
        lease = await daemon.call("acquire", model="chat:latest")
        assert lease["model"] == "chat" and lease["served_model_name"] == "chat"
        await daemon.call("release", lease=lease["lease"])
        assert (await daemon.call("stop", model="gpt-4o"))["model"] == "chat"
        assert (await daemon.call("status"))["models"]["chat"]["aliases"] == [
            "gpt-4o",
            "chat:latest",
        ]
    assert state_of(front.engine, "chat") is State.STOPPED


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"a": ["b"]}, "models.a.aliases: 'b' is already a model's name"),
        ({"a": ["x"], "b": ["x"]}, "models.b.aliases: 'x' is already an alias of a"),
        ({"a": ["bad name"]}, "models.a.aliases.0"),
    ],
)
def test_aliases_must_name_one_model_each(aliases: dict[str, list[str]], message: str) -> None:
    """An alias that is another model's name or alias, or not a valid name, is a config
    error naming the field."""
    models = {name: {"aliases": aliases.get(name, [])} for name in ("a", "b")}
    with pytest.raises(ConfigError) as caught:
        make_config(models)
    assert message in caught.value.message
