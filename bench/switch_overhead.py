"""P3: what a waiting `switch` adds over the tightest way to start a container and know
it answers: the same container started directly through the Docker API and `/health`
polled every 10 ms. Target: at most 50 ms median overhead (llama-swap polls once a
second; the seed does not wait at all).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import aiodocker
import aiohttp

from bench.common import Report, cli, figure
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.docker import DockerRuntime
from modeld.adapters.vllm import VllmClient
from modeld.client import Client
from modeld.core.config import parse_config
from modeld.daemon.server import RpcServer
from modeld.engine.build import build_engine
from modeld.service.logs import configure_logging
from modeld.testing.ports import free_port
from tests.support.docker_image import build_image, docker_cli, engine_problem

# Not a multiple of any poll interval, so the figure shows the real polling lag.
LOAD_SECONDS = 1.23


async def direct(name: str, endpoint: str) -> float:
    """Seconds from `start` through the Docker API to `/health` 200, polling every 10 ms."""
    async with aiodocker.Docker() as docker, aiohttp.ClientSession() as http:
        container = await docker.containers.get(name)
        started = time.perf_counter()
        await container.start()
        while True:
            try:
                async with http.get(f"{endpoint}/health") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await container.stop(t=5)
        return elapsed


async def measure(rounds: int) -> tuple[list[float], list[float]]:
    """Direct and modeld timings of the same container, interleaved."""
    image = build_image()
    port = free_port()
    name = f"modeld-bench-{uuid.uuid4().hex[:8]}"
    docker_cli(
        "create",
        "--name",
        name,
        "--network",
        "host",
        image,
        "/fake-vllm",
        str(port),
        str(LOAD_SECONDS),
    )
    config = parse_config(
        {
            # The baseline starts the container behind modeld's back: keep the monitor from
            # adopting it meanwhile (it would, correctly, and then see it stopped).
            "daemon": {
                "state_dir": tempfile.mkdtemp(prefix="modeld-bench-"),
                "poll_interval_s": 3600,
            },
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {
                "m": {
                    "runtime": "docker",
                    # As the direct start it is measured against: trusted on /health 200.
                    "probe": "health",
                    "container": name,
                    "gpu_memory_gb": 10,
                    "endpoint": f"http://127.0.0.1:{port}",
                    "stop_timeout_s": 5,
                }
            },
        }
    )
    engine = await build_engine(
        config,
        gpu=SimulatedGpu(config.gpu),
        runtimes={"docker": DockerRuntime()},
        vllm=VllmClient(),
    )
    await engine.startup()
    path = Path(tempfile.mkdtemp()) / "modeld.sock"
    server = RpcServer(engine, path)
    await server.start()
    baseline, modeld = [], []
    try:
        async with Client(path) as client:
            for _ in range(rounds):
                baseline.append(await direct(name, config.models["m"].endpoint))
                started = time.perf_counter()
                await client.call("switch", model="m")
                modeld.append(time.perf_counter() - started)
                await client.call("stop", model="m")
    finally:
        await server.close()
        await engine.shutdown()
        docker_cli("rm", "-f", name, check=False)
    return baseline, modeld


def run(quick: bool) -> Report:
    """Measure P3 (needs a Docker engine)."""
    configure_logging("warning")
    report = Report("switch_overhead")
    problem = engine_problem()
    if problem:
        print(f"switch_overhead: skipped: {problem}")
        return report
    baseline, modeld = asyncio.run(measure(2 if quick else 15))
    base = figure("direct start + 10 ms health poll", "ms", [s * 1000 for s in baseline])
    report.add(base)
    switch = figure(
        "modeld switch (waiting)",
        "ms",
        [s * 1000 for s in modeld],
        baseline=base.median,
        notes=f"backend healthy {LOAD_SECONDS}s after start",
    )
    report.add(switch)
    overhead = figure(
        "switch overhead",
        "ms",
        [(m - b) * 1000 for m, b in zip(modeld, baseline, strict=True)],
        target="median <= 50 ms",
    )
    overhead.met = overhead.median <= 50
    report.add(overhead)
    return report


def main() -> None:
    """Run alone: `python -m bench.switch_overhead [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
