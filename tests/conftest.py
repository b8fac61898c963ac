"""Shared fixtures: free ports, configs, and a supervisor over the fake runtime."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modeld.build import build_supervisor
from modeld.config import Config, parse_config
from modeld.gpu.simulated import SimulatedGpu
from modeld.server import RpcServer
from modeld.supervisor import Supervisor
from modeld.testing.docker import build_image, docker_cli, docker_required, engine_problem
from modeld.testing.fakes import FakeRuntime
from modeld.testing.ports import free_port
from modeld.vllm import VllmClient

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
        name: {
            "runtime": "process",
            "command": ["unused"],
            "endpoint": f"http://127.0.0.1:{free_port()}",
            "load_timeout_s": 10,
            **table,
        }
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


SupervisorFactory = Callable[..., Any]


@pytest.fixture
async def supervised() -> AsyncIterator[SupervisorFactory]:
    """Build started Supervisors over FakeRuntime + SimulatedGpu; shut them down after."""
    made: list[Supervisor] = []

    async def build(
        config: Config, config_path: Path | None = None, **options: Any
    ) -> tuple[Supervisor, FakeRuntime, SimulatedGpu]:
        runtime = FakeRuntime()
        gpu = SimulatedGpu(config.gpu, alive=runtime.alive)
        runtime.gpu = gpu
        supervisor = await build_supervisor(
            config,
            gpu=gpu,
            runtimes={"process": runtime},
            vllm=VllmClient(timeout_s=1),
            config_path=config_path,
            **options,
        )
        await supervisor.startup()
        made.append(supervisor)
        return supervisor, runtime, gpu

    yield build
    for supervisor in made:
        await supervisor.shutdown()


@pytest.fixture(scope="session")
def image() -> str:
    """The fake-vLLM image; skip (or fail, in CI) when no engine can run."""
    problem = engine_problem()
    if problem is not None:
        if docker_required():
            pytest.fail(f"Docker is required here but unusable: {problem}")
        pytest.skip(f"no usable Docker engine: {problem}")
    return build_image()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique container-name prefix; every container with it is removed afterwards."""
    prefix = f"modeld-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    names = docker_cli("ps", "-aq", "--filter", f"name={prefix}", check=False).stdout.split()
    if names:
        docker_cli("rm", "-f", *names, check=False)


Served = tuple[Path, Supervisor, FakeRuntime]
ServeFactory = Callable[[Config], Awaitable[Served]]


@pytest.fixture
async def serve(supervised: SupervisorFactory, tmp_path: Path) -> AsyncIterator[ServeFactory]:
    """Start RpcServers over supervised fake hosts: each gives socket, Supervisor, runtime."""
    servers: list[RpcServer] = []

    async def start(config: Config) -> Served:
        supervisor, runtime, _ = await supervised(config)
        path = tmp_path / f"modeld-{len(servers)}.sock"
        server = RpcServer(supervisor, path)
        await server.start()
        servers.append(server)
        return path, supervisor, runtime

    yield start
    for server in servers:
        await server.close()
