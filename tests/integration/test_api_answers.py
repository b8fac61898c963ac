"""Every answer the daemon gives over its socket has the shape its schema says
(docs/api.schema.json is generated from the same models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from modeld.client import Client
from modeld.daemon.methods import BY_NAME
from tests.support import ServeFactory, make_config

MODELS: dict[str, dict[str, Any]] = {
    "alpha": {"gpu_memory_gb": 50, "size_gb": 40, "sleep_mode": True, "hf_path": "org/alpha"},
    "beta": {"gpu_memory_gb": 50, "size_gb": 40},
}


def check(method: str, answer: Any) -> None:
    """The answer validates, strictly (no field the schema lacks), as the method's result."""
    result = BY_NAME[method].result
    adapter: TypeAdapter[Any] = TypeAdapter(result)
    validated = adapter.validate_python(answer)
    if isinstance(validated, BaseModel):
        # Nothing left out of the schema: the answer round-trips to the same JSON.
        assert validated.model_dump(mode="json", exclude_unset=True) == answer


async def test_each_methods_answer_matches_its_schema(serve: ServeFactory) -> None:
    """ping, status (stopped, running, sleeping, failed models), gpu, models, plan (a
    start, nothing to do, a park, a wake), switch (a cold start, a park, already
    running), start, acquire, release, stop, logs and
    subscribe: each answer matches its result model."""
    config = make_config(MODELS, [80], park_ram_gb=100)
    path, engine, runtime = await serve(config)
    async with Client(path) as client:
        for method in ("ping", "status", "gpu", "models", "subscribe"):
            check(method, await client.call(method))
        check("plan", await client.call("plan", model="alpha"))
        check("switch", await client.call("switch", model="alpha"))
        check("switch", await client.call("switch", model="alpha"))
        check("plan", await client.call("plan", model="alpha"))
        check("plan", await client.call("plan", model="beta"))
        check("switch", await client.call("switch", model="beta"))  # parks alpha
        check("plan", await client.call("plan", model="alpha"))  # a wake
        check("status", await client.call("status"))
        lease = await client.call("acquire", model="beta")
        check("acquire", lease)
        check("release", await client.call("release", lease=lease["lease"]))
        check("logs", await client.call("logs", model="beta", lines=5))
        check("logs", await client.call("logs", model="beta", follow=True))
        check("stop", await client.call("stop", model="beta"))
        check("stop", await client.call("stop", model="beta"))
        check("start", await client.call("start", model="beta"))
        check("restart", await client.call("restart", model="beta"))
        await runtime.kill_behind_back("beta", 137)
        await engine.poll_once()
        check("status", await client.call("status"))
        assert (await client.call("status"))["models"]["beta"]["failure"] is not None
