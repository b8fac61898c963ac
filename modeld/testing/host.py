"""The one fake host: fake vLLM backends on a simulated GPU under a real Engine, and a
real Daemon on a socket when asked. The tests and the benchmarks build their hosts
here, the same way the daemon builds its own (build_engine, Daemon), so what they
measure and check is what runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.vllm import VllmClient
from modeld.core.config import Config
from modeld.daemon.run import Daemon
from modeld.daemon.server import Limits
from modeld.engine.build import build_engine
from modeld.engine.engine import Engine
from modeld.testing.fakes import FakeRuntime


@dataclass
class FakeHost:
    """A config's models as fake backends (`runtime`) on a simulated GPU (`gpu`), under a
    real Engine."""

    config: Config
    runtime: FakeRuntime
    gpu: SimulatedGpu
    engine: Engine

    def daemon(self, socket_path: Path, limits: Limits | None = None) -> Daemon:
        """A Daemon serving this host's Engine on `socket_path` (not yet started)."""
        return Daemon(self.config, engine=self.engine, socket_path=socket_path, limits=limits)


async def build_fake_host(
    config: Config,
    *,
    runtime: FakeRuntime | None = None,
    gpu: SimulatedGpu | None = None,
    **options: Any,
) -> FakeHost:
    """A fake host (its Engine not yet started); `options` go to build_engine
    (config_path, metrics, store...)."""
    runtime = runtime if runtime is not None else FakeRuntime()
    if gpu is None:
        gpu = SimulatedGpu(config.gpu, alive=runtime.alive)
        runtime.gpu = gpu
    # A fake backend answers at once or not at all: a short timeout keeps tests brisk.
    options.setdefault("vllm", VllmClient(timeout_s=1))
    engine = await build_engine(config, gpu=gpu, runtimes={"process": runtime}, **options)
    return FakeHost(config, runtime, gpu, engine)


@asynccontextmanager
async def running_host(config: Config, **options: Any) -> AsyncIterator[FakeHost]:
    """A started fake host, shut down on exit."""
    host = await build_fake_host(config, **options)
    await host.engine.startup()
    try:
        yield host
    finally:
        await host.engine.shutdown()
