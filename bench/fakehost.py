"""Two 50 GB fake vLLM models ("a", "b") on a simulated 80 GB GPU, under a real
Engine: only one fits at a time, so every switch between them makes room."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from modeld.core.config import parse_config
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.testing.host import running_host
from modeld.testing.ports import free_port


@asynccontextmanager
async def two_models(
    runtime: FakeRuntime,
    behaviour: Behaviour,
    *,
    release_delay_s: float = 0.0,
    daemon: dict[str, Any] | None = None,
    **model: Any,
) -> AsyncIterator[Engine]:
    """A started Engine over `runtime` (every backend behaving as `behaviour`); the
    models take `model`'s extra settings. Shut down on exit."""
    models = {
        name: {
            "runtime": "process",
            "command": ["x"],
            "gpu_memory_gb": 50,
            "endpoint": f"http://127.0.0.1:{free_port()}",
            **model,
        }
        for name in ("a", "b")
    }
    config = parse_config(
        {
            "daemon": {"state_dir": tempfile.mkdtemp(prefix="modeld-bench-"), **(daemon or {})},
            "gpu": {"backend": "simulated", "devices_gb": [80], "release_delay_s": release_delay_s},
            "models": models,
        }
    )
    for name in models:
        runtime.behaviour[name] = behaviour
    async with running_host(config, runtime=runtime) as host:
        yield host.engine
