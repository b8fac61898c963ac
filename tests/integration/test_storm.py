"""A storm of concurrent switches against real containers: never overcommitted, every
request answered, and modeld's states equal Docker's at the end."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from modeld.adapters.gpu.base import BackendRef, GpuReading
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.docker import DockerRuntime
from modeld.adapters.vllm import VllmClient
from modeld.client import Client, RpcError
from modeld.core.gpu_config import GpuConfig
from modeld.daemon.server import RpcServer
from modeld.engine.build import build_engine
from modeld.testing.ports import free_port
from tests.support import docker_config
from tests.support.docker_image import docker_cli

pytestmark = pytest.mark.docker

CLIENTS = 16
SWITCHES_EACH = 12
MODELS = ("m0", "m1", "m2", "m3")
CAPACITY_GB = 70.0


class RecordingGpu(SimulatedGpu):
    """The simulated GPU, remembering the highest use it ever reported per device."""

    def __init__(self, config: GpuConfig) -> None:
        super().__init__(config)
        self.peak_gb: dict[int, float] = {}
        self.readings = 0

    async def read(self, backends: Sequence[BackendRef]) -> GpuReading:
        """Read, and record the peak."""
        reading = await super().read(backends)
        self.readings += 1
        for device in reading.devices:
            self.peak_gb[device.index] = max(self.peak_gb.get(device.index, 0.0), device.used_gb)
        return reading


def existing_container(image: str, prefix: str, name: str) -> dict[str, Any]:
    """A compose-style container (created once; modeld only starts and stops it)."""
    port = free_port()
    container = f"{prefix}-{name}"
    docker_cli(
        "create",
        "--name",
        container,
        "--network",
        "host",
        "--label",
        f"modeld.model={name}",
        image,
        "/fake-vllm",
        str(port),
        "0",
    )
    return {
        "runtime": "docker",
        "probe": "health",  # the image answers /health, not tokens
        "container": container,
        "endpoint": f"http://127.0.0.1:{port}",
        "gpu_memory_gb": 30,
        "size_gb": 30,
        "load_timeout_s": 30,
        "stop_timeout_s": 5,
    }


async def client_storm(path: Path, seed: int) -> list[dict[str, Any]]:
    """One client's random switches; every answer or error, as received."""
    rng = random.Random(seed)
    answers: list[dict[str, Any]] = []
    async with Client(path) as client:
        for _ in range(SWITCHES_EACH):
            try:
                result = await client.call("switch", model=rng.choice(MODELS))
                answers.append({"result": result})
            except RpcError as exc:
                answers.append({"error": exc.code, "data": exc.data})
    return answers


async def test_storm_of_switches(image: str, prefix: str, tmp_path: Path) -> None:
    """16 clients x 12 random switches over 4 models of which 2 fit."""
    tables = {name: existing_container(image, prefix, name) for name in MODELS}
    config = docker_config(tables, [CAPACITY_GB], release_delay_s=0.05)
    gpu = RecordingGpu(config.gpu)
    engine = await build_engine(
        config,
        gpu=gpu,
        runtimes={"docker": DockerRuntime()},
        vllm=VllmClient(timeout_s=2),
    )
    await engine.startup()
    server = RpcServer(engine, tmp_path / "storm.sock", max_connections=64)
    await server.start()
    try:
        results = await asyncio.gather(
            *(client_storm(tmp_path / "storm.sock", seed) for seed in range(CLIENTS))
        )
        await engine.poll_once()
        status = engine.view.status()
    finally:
        await server.close()
        await engine.shutdown()
    answers = [answer for client in results for answer in client]
    starts = sum(a.get("result", {}).get("status") == "success" for a in answers)
    assert starts > CLIENTS  # the storm really evicted and started, not just answered
    assert len(answers) == CLIENTS * SWITCHES_EACH
    for answer in answers:
        assert "error" not in answer, answer
        assert answer["result"]["status"] in ("success", "already_loaded")
    assert gpu.peak_gb[0] <= CAPACITY_GB
    assert gpu.readings > 0
    for name in MODELS:
        running = (
            docker_cli(
                "inspect", "--format", "{{.State.Running}}", f"{prefix}-{name}"
            ).stdout.strip()
            == "true"
        )
        assert status.models[name].status == ("running" if running else "stopped"), name
    assert sum(m.status == "running" for m in status.models.values()) == 2
