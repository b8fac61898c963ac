"""What the tests share: configs, the seed's field names, waiting on other processes,
and the types of the fixtures in conftest.py. Tests import helpers from here, never
from conftest.py or from each other."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.process import ProcessRuntime
from modeld.core.config import Config, ModelConfig, parse_config
from modeld.core.states import State
from modeld.engine.engine import Engine
from modeld.testing.fakes import FakeRuntime
from modeld.testing.host import build_fake_host
from modeld.testing.ports import free_port
from modeld.wire.events import AnyEvent, Subscription

# The router seed's field names: clients written for it must keep working.
SEED_MODEL_FIELDS = frozenset(
    {
        "status",
        "size_gb",
        "description",
        "estimated_load_time_seconds",
        "gpu_memory_used_gb",
        "downloaded_size",
        "health",
    }
)
SEED_GPU_FIELDS = frozenset(
    {
        "used_mb",
        "total_mb",
        "available_mb",
        "used_gb",
        "total_gb",
        "available_gb",
    }
)


async def next_of(events: Subscription, kind: str, **match: Any) -> AnyEvent:
    """The next event of `kind` whose fields match (ten seconds at most)."""
    async with asyncio.timeout(10):
        while True:
            event = await events.next()
            if event.type == kind and all(getattr(event, k, None) == v for k, v in match.items()):
                return event


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Poll an outside condition (a process, a port) until true; TimeoutError at the deadline."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


def make_config(
    models: dict[str, dict[str, Any]],
    devices_gb: list[float] | None = None,
    **daemon: Any,
) -> Config:
    """A process-runtime config on a simulated GPU, each model on its own free port."""
    tables = {
        name: (
            {"load_timeout_s": 10, **table}
            if "base" in table  # an adapter runs in its base's backend
            else {
                "runtime": "process",
                "command": ["unused"],
                "endpoint": f"http://127.0.0.1:{free_port()}",
                "load_timeout_s": 10,
                **table,
            }
        )
        for name, table in models.items()
    }
    gpu = {"backend": "simulated", "devices_gb": devices_gb or [80], "release_delay_s": 0.0}
    gpu.update(daemon.pop("gpu", {}))
    settings = {
        "state_dir": tempfile.mkdtemp(prefix="modeld-state-"),
        # The tests' expectations are written against the seed's policy.
        "eviction_policy": "largest_first",
        "poll_interval_s": 3600,
        "health_poll_interval_s": 0.02,
        "memory_poll_interval_s": 0.01,
        **daemon,
    }
    return parse_config({"daemon": settings, "gpu": gpu, "models": tables})


EngineFactory = Callable[..., Awaitable[tuple[Engine, FakeRuntime, SimulatedGpu]]]

Served = tuple[Path, Engine, FakeRuntime]
ServeFactory = Callable[..., Awaitable[Served]]


async def has_output(runtime: ProcessRuntime, model: ModelConfig) -> bool:
    """True once the backend printed a line."""
    return bool(await runtime.logs(model))


def process_model(command: list[str], port: int = 1, **extra: object) -> ModelConfig:
    """A process-runtime model config."""
    return ModelConfig.model_validate(
        {
            "name": "m",
            "runtime": "process",
            "command": command,
            "endpoint": f"http://127.0.0.1:{port}",
            **extra,
        }
    )


def docker_config(
    models: dict[str, dict[str, Any]],
    devices_gb: list[float],
    release_delay_s: float = 0.2,
    **daemon: Any,
) -> Config:
    """Docker models on a simulated GPU, with a fast monitor."""
    return parse_config(
        {
            "daemon": {
                "state_dir": tempfile.mkdtemp(prefix="modeld-state-"),
                "eviction_policy": "largest_first",
                "poll_interval_s": 0.2,
                "health_poll_interval_s": 0.05,
                "memory_poll_interval_s": 0.02,
                **daemon,
            },
            "gpu": {
                "backend": "simulated",
                "devices_gb": devices_gb,
                "release_delay_s": release_delay_s,
            },
            "models": models,
        }
    )


def state_of(engine: Engine, name: str) -> State:
    """A model's state, as `status` shows it."""
    return State(engine.view.status().models[name].status)


async def wait_for_state(engine: Engine, name: str, states: set[State], timeout: float) -> State:
    """Return once `name` is in one of `states` (woken by each transition); TimeoutError
    after `timeout`."""
    async with asyncio.timeout(timeout):
        while (current := state_of(engine, name)) not in states:
            await engine.events.changed()
    return current


async def start_over(
    config: Config, runtime: FakeRuntime, gpu: SimulatedGpu, **options: Any
) -> Engine:
    """A started Engine over the fake runtime and the given GPU: for tests with their
    own GPU fake, or a second daemon over the same host."""
    host = await build_fake_host(config, runtime=runtime, gpu=gpu, **options)
    engine = host.engine
    await engine.startup()
    return engine
