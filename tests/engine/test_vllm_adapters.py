"""The vLLM client's LoRA calls against the test kit's fake vLLM, which answers as vLLM
0.32's API server does (the real-vLLM tier checks the same against the real one): an
adapter loaded at run time is listed with its parent and answers as itself; vLLM's
refusals arrive as AdapterFailed with vLLM's own reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from modeld.adapters.vllm import VllmClient
from modeld.core.errors import AdapterFailed
from modeld.testing.fakevllm import FakeVllm
from modeld.testing.fakevllm_lora import FakeLoras
from modeld.testing.ports import free_port


def adapter(root: Path, name: str, rank: int = 8) -> str:
    """A directory in PEFT's layout (the fake reads only the config)."""
    path = root / name
    path.mkdir()
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return str(path)


@pytest.fixture
async def base() -> AsyncIterator[tuple[str, FakeLoras]]:
    """A fake base serving adapters at run time (rank 16 at most)."""
    loras = FakeLoras("base", max_lora_rank=16)
    server = FakeVllm("base", free_port(), loras=loras)
    await server.load()
    yield f"http://127.0.0.1:{server.port}", loras
    await server.close()


@pytest.fixture
async def vllm() -> AsyncIterator[VllmClient]:
    client = VllmClient(timeout_s=5)
    yield client
    await client.close()


async def complete(endpoint: str, model: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{endpoint}/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2}
        ) as response,
    ):
        answer = await response.json()
        return response.status, answer["choices"][0]["text"] if response.status == 200 else ""


async def test_an_adapter_loaded_at_run_time_answers_as_itself(
    base: tuple[str, FakeLoras], vllm: VllmClient, tmp_path: Path
) -> None:
    """Before its load a request naming it is vLLM's 404; once loaded, `/v1/models`
    lists it under its parent and it answers unlike the base; unloaded, it is gone and
    a second unload says it was not there."""
    endpoint, _ = base
    sql = adapter(tmp_path, "sql")
    assert (await complete(endpoint, "base-sql"))[0] == 404
    await vllm.load_adapter(endpoint, "base-sql", sql, timeout_s=5)
    assert await vllm.adapters(endpoint) == {"base-sql": sql}
    status, text = await complete(endpoint, "base-sql")
    assert status == 200 and text != (await complete(endpoint, "base"))[1]
    assert await vllm.unload_adapter(endpoint, "base-sql", timeout_s=5) is True
    assert await vllm.adapters(endpoint) == {}
    assert await vllm.unload_adapter(endpoint, "base-sql", timeout_s=5) is False


async def test_vllms_refusals_say_its_reason(
    base: tuple[str, FakeLoras], vllm: VllmClient, tmp_path: Path
) -> None:
    """A path with no adapter, a rank past --max-lora-rank, a name loaded already: each
    refused with vLLM's words in the message, and nothing is loaded by them."""
    endpoint, loras = base
    with pytest.raises(AdapterFailed, match="No adapter found for /nowhere") as missing:
        await vllm.load_adapter(endpoint, "x", "/nowhere", timeout_s=5)
    assert missing.value.data["status"] == 404
    with pytest.raises(AdapterFailed, match="rank 32 is greater than max_lora_rank 16"):
        await vllm.load_adapter(endpoint, "wide", adapter(tmp_path, "wide", 32), timeout_s=5)
    await vllm.load_adapter(endpoint, "sql", adapter(tmp_path, "sql"), timeout_s=5)
    with pytest.raises(AdapterFailed, match="already been loaded"):
        await vllm.load_adapter(endpoint, "sql", str(tmp_path / "sql"), timeout_s=5)
    assert list(loras.loaded) == ["sql"] and loras.loads == 1


async def test_a_base_without_runtime_updating_is_named_as_the_cause(
    vllm: VllmClient, tmp_path: Path
) -> None:
    """vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING has no such endpoint (a 404 that is
    not vLLM's error body): the message names the settings to check."""
    server = FakeVllm("plain", free_port())
    await server.load()
    try:
        with pytest.raises(AdapterFailed, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            await vllm.load_adapter(
                f"http://127.0.0.1:{server.port}", "sql", adapter(tmp_path, "sql"), 5
            )
    finally:
        await server.close()


async def test_an_unreachable_base_is_an_adapter_failure_not_a_hang(
    vllm: VllmClient,
) -> None:
    """Nothing listens: AdapterFailed at once, for a load and for the listing."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AdapterFailed, match="failed"):
        await vllm.load_adapter(endpoint, "sql", "/srv/sql", timeout_s=5)
    with pytest.raises(AdapterFailed, match="failed"):
        await vllm.adapters(endpoint)
