"""The fixtures every tier may use: fake hosts (modeld.testing.host), served by a
Daemon on a socket; the Docker test image and container names. Helpers live in tests/support."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.core.config import Config
from modeld.daemon.run import Daemon
from modeld.daemon.server import Limits
from modeld.engine.engine import Engine
from modeld.testing.fakes import FakeRuntime
from modeld.testing.host import build_fake_host
from tests.support import EngineFactory, Served, ServeFactory
from tests.support.docker_image import build_image, docker_cli, docker_required, engine_problem


@pytest.fixture
async def engines() -> AsyncIterator[EngineFactory]:
    """Build started fake hosts (modeld.testing.host); shut their Engines down after."""
    made: list[Engine] = []

    async def build(
        config: Config, config_path: Path | None = None, **options: Any
    ) -> tuple[Engine, FakeRuntime, SimulatedGpu]:
        host = await build_fake_host(config, config_path=config_path, **options)
        await host.engine.startup()
        made.append(host.engine)
        return host.engine, host.runtime, host.gpu

    yield build
    for engine in made:
        await engine.shutdown()


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
async def serve(tmp_path: Path) -> AsyncIterator[ServeFactory]:
    """Start Daemons over fake hosts, as the daemon starts: each gives socket, Engine,
    runtime."""
    daemons: list[Daemon] = []

    async def start(config: Config, limits: Limits | None = None) -> Served:
        host = await build_fake_host(config)
        path = tmp_path / f"modeld-{len(daemons)}.sock"
        daemon = host.daemon(path, limits)
        try:
            await daemon.startup()
        finally:
            daemons.append(daemon)
        return path, host.engine, host.runtime

    yield start
    for daemon in daemons:
        await daemon.shutdown()
