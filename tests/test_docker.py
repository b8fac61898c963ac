"""Integration with a real Docker engine: modeld drives real containers through aiodocker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modeld.client import Client, RpcError
from modeld.config import Config, parse_config
from modeld.gpu.simulated import SimulatedGpu
from modeld.health import HealthProbe
from modeld.rpc import RpcServer
from modeld.runtime.docker import DockerRuntime
from modeld.states import State
from modeld.supervisor import Supervisor
from tests.conftest import SEED_GPU_FIELDS, SEED_MODEL_FIELDS, free_port
from tests.docker_support import build_image, docker_cli, docker_required, engine_problem

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
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


def model(image: str, prefix: str, name: str, gb: float, *extra: str) -> dict[str, Any]:
    """A docker model table for the fake-vLLM image on host networking."""
    port = free_port()
    return {
        "runtime": "docker",
        "image": image,
        "container": f"{prefix}-{name}",
        "command": ["/fake-vllm", str(port), "0.5", *extra],
        "env": {"MODEL": name},
        "network_mode": "host",
        "request_gpus": False,
        "endpoint": f"http://127.0.0.1:{port}",
        "gpu_memory_gb": gb,
        "size_gb": gb,
        "load_timeout_s": 20,
        "stop_timeout_s": 5,
    }


def docker_config(models: dict[str, dict[str, Any]], devices_gb: list[float]) -> Config:
    """Docker models on a simulated GPU, with a fast monitor."""
    return parse_config(
        {
            "daemon": {
                "poll_interval_s": 0.2,
                "health_poll_interval_s": 0.05,
                "memory_poll_interval_s": 0.02,
            },
            "gpu": {"backend": "simulated", "devices_gb": devices_gb, "release_delay_s": 0.2},
            "models": models,
        }
    )


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Any]:
    """Start a Supervisor + RpcServer over the real engine; yield a starter."""
    running: list[tuple[Supervisor, RpcServer]] = []

    async def start(
        config: Config, runtime: DockerRuntime | None = None
    ) -> tuple[Supervisor, Path]:
        gpu = SimulatedGpu(config.gpu)
        supervisor = Supervisor(
            config, gpu, {"docker": runtime or DockerRuntime()}, HealthProbe(timeout_s=1)
        )
        await supervisor.startup()
        path = tmp_path / f"modeld-{len(running)}.sock"
        server = RpcServer(supervisor, path)
        await server.start()
        running.append((supervisor, server))
        return supervisor, path

    yield start
    for supervisor, server in running:
        await server.close()
        await supervisor.shutdown()


def container_state(name: str) -> str:
    """What Docker itself says about a container."""
    return docker_cli("inspect", "--format", "{{.State.Status}}", name).stdout.strip()


async def health(endpoint: str) -> int:
    """GET /health on a backend, as a vLLM client would."""
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/health") as r:
        return r.status


async def test_switch_three_models_where_two_fit(image: str, prefix: str, daemon: Any) -> None:
    """Switch A, B, C on a GPU holding two: A's container is stopped, C runs and answers."""
    tables = {
        "a": model(image, prefix, "a", 30),
        "b": model(image, prefix, "b", 25),
        "c": model(image, prefix, "c", 30),
    }
    _, path = await daemon(docker_config(tables, [60]))
    async with Client(path) as client:
        assert (await client.call("switch", model="a"))["state"] == "running"
        assert (await client.call("switch", model="b"))["state"] == "running"
        result = await client.call("switch", model="c")
        # Healthy before switch returned: the port answers right now.
        assert await health(tables["c"]["endpoint"]) == 200
        assert result["status"] == "success"
        assert result["unloaded_models"] == ["a"]
        assert container_state(f"{prefix}-a") == "exited"
        assert container_state(f"{prefix}-b") == "running"
        assert container_state(f"{prefix}-c") == "running"
        labels = docker_cli(
            "inspect", "--format", '{{index .Config.Labels "modeld.model"}}', f"{prefix}-c"
        ).stdout.strip()
        assert labels == "c"
        status = await client.call("status")
        for name, expected in (("a", "stopped"), ("b", "running"), ("c", "running")):
            view = status["models"][name]
            assert view["status"] == expected
            assert view.keys() >= SEED_MODEL_FIELDS
        assert status["gpu"].keys() >= SEED_GPU_FIELDS
        assert status["gpu"]["used_gb"] == 55.0


async def test_container_exiting_during_load_fails(image: str, prefix: str, daemon: Any) -> None:
    """A container that exits while loading is `failed` with its exit code and log lines."""
    tables = {"bad": model(image, prefix, "bad", 10, "3")}
    _, path = await daemon(docker_config(tables, [60]))
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="bad")
        assert caught.value.code == -32003
        assert caught.value.data["exit_code"] == 3
        assert any("CUDA error" in line for line in caught.value.data["last_lines"])
        view = (await client.call("status"))["models"]["bad"]
        assert view["status"] == "failed"
        assert view["failure"]["exit_code"] == 3


async def test_docker_stop_behind_back_is_noticed(image: str, prefix: str, daemon: Any) -> None:
    """`docker stop` by hand turns a running model `failed`, noticed by the monitor."""
    tables = {"a": model(image, prefix, "a", 10)}
    supervisor, _ = await daemon(docker_config(tables, [60]))
    await supervisor.switch("a")
    await asyncio.to_thread(docker_cli, "stop", f"{prefix}-a")
    assert await supervisor.wait_for_state("a", {State.FAILED}, 15) is State.FAILED
    failure = supervisor.status()["models"]["a"]["failure"]
    assert "without modeld asking" in failure["reason"]


async def test_existing_container_is_started_and_stopped(
    image: str, prefix: str, daemon: Any
) -> None:
    """A compose-style container that exists by name is started and stopped, not recreated."""
    port = free_port()
    name = f"{prefix}-existing"
    created = docker_cli(
        "create", "--name", name, "--network", "host", image, "/fake-vllm", str(port), "0.3"
    ).stdout.strip()
    tables = {
        "existing": {
            "runtime": "docker",
            "container": name,
            "endpoint": f"http://127.0.0.1:{port}",
            "gpu_memory_gb": 10,
            "stop_timeout_s": 5,
        }
    }
    supervisor, _ = await daemon(docker_config(tables, [60]))
    await supervisor.switch("existing")
    assert container_state(name) == "running"
    assert docker_cli("inspect", "--format", "{{.Id}}", name).stdout.strip() == created
    await supervisor.stop("existing")
    assert container_state(name) == "exited"


async def test_missing_container_fails_with_docker_message(
    image: str, prefix: str, daemon: Any
) -> None:
    """A model naming a container that does not exist fails its load with a clear reason."""
    tables = {
        "ghost": {
            "runtime": "docker",
            "container": f"{prefix}-ghost",
            "endpoint": f"http://127.0.0.1:{free_port()}",
            "gpu_memory_gb": 10,
        }
    }
    _, path = await daemon(docker_config(tables, [60]))
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="ghost")
        assert caught.value.code == -32003
        assert "does not exist" in caught.value.message


async def test_running_container_is_adopted_not_restarted(
    image: str, prefix: str, daemon: Any
) -> None:
    """A healthy container found at startup becomes `running` with the same start time."""
    tables = {"a": model(image, prefix, "a", 10)}
    config = docker_config(tables, [60])
    first, _ = await daemon(config)
    await first.switch("a")
    started = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-a").stdout
    second, _ = await daemon(config)
    assert await second.wait_for_state("a", {State.RUNNING}, 15) is State.RUNNING
    after = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-a").stdout
    assert after == started


async def test_engine_unreachable_is_a_clear_error(tmp_path: Path, daemon: Any) -> None:
    """With no engine on the socket, status answers and switch gets runtime_unavailable."""
    tables = {
        "a": {
            "runtime": "docker",
            "container": "whatever",
            "endpoint": "http://127.0.0.1:1",
            "gpu_memory_gb": 10,
        }
    }
    runtime = DockerRuntime(url=f"unix://{tmp_path}/no-docker.sock")
    _, path = await daemon(docker_config(tables, [60]), runtime)
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="a")
        assert caught.value.code == -32005
        status = await client.call("status")
        assert status["runtimes"]["docker"]["available"] is False
        assert status["models"]["a"]["status"] == "stopped"
