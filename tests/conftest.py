"""The fixtures every tier may use: supervisors over the fake runtime, served on a
socket; the Docker test image and container names. Helpers live in tests/support."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.vllm import VllmClient
from modeld.core.config import Config
from modeld.daemon.server import Limits, RpcServer
from modeld.engine.build import build_engine
from modeld.engine.engine import Engine
from modeld.testing.docker import build_image, docker_cli, docker_required, engine_problem
from modeld.testing.fakes import FakeRuntime
from tests.support import Served, ServeFactory, SupervisorFactory


@pytest.fixture
async def supervised() -> AsyncIterator[SupervisorFactory]:
    """Build started Supervisors over FakeRuntime + SimulatedGpu; shut them down after."""
    made: list[Engine] = []

    async def build(
        config: Config, config_path: Path | None = None, **options: Any
    ) -> tuple[Engine, FakeRuntime, SimulatedGpu]:
        runtime = FakeRuntime()
        gpu = SimulatedGpu(config.gpu, alive=runtime.alive)
        runtime.gpu = gpu
        supervisor = await build_engine(
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


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="modeld-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture
async def serve(supervised: SupervisorFactory, tmp_path: Path) -> AsyncIterator[ServeFactory]:
    """Start RpcServers over supervised fake hosts: each gives socket, Engine, runtime."""
    servers: list[RpcServer] = []

    async def start(config: Config, limits: Limits | None = None) -> Served:
        supervisor, runtime, _ = await supervised(config)
        path = tmp_path / f"modeld-{len(servers)}.sock"
        server = RpcServer(supervisor, path, limits=limits)
        await server.start()
        servers.append(server)
        return path, supervisor, runtime

    yield start
    for server in servers:
        await server.close()
