"""One way to make an Engine from a config: used by the daemon, the tests and the
benchmarks, so what they run is put together the same way."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from modeld.adapters.gpu import open_gpu_monitor
from modeld.adapters.gpu.base import GpuMonitor
from modeld.adapters.hostmem import parkable_ram_gb
from modeld.adapters.runtime.base import Runtime
from modeld.adapters.vllm import VllmClient
from modeld.core.config import Config
from modeld.engine.engine import Engine
from modeld.engine.metrics import MetricsSink


def build_runtimes(config: Config) -> dict[str, Runtime]:
    """One runtime of each kind the configured models use."""
    runtimes: dict[str, Runtime] = {}
    kinds = {model.runtime for model in config.models.values()}
    if "docker" in kinds:
        from modeld.adapters.runtime.docker import DockerRuntime

        runtimes["docker"] = DockerRuntime()
    if "process" in kinds:
        from modeld.adapters.runtime.process import ProcessRuntime

        runtimes["process"] = ProcessRuntime(config.daemon.pass_env)
    return runtimes


async def build_engine(
    config: Config,
    *,
    gpu: GpuMonitor | None = None,
    runtimes: Mapping[str, Runtime] | None = None,
    vllm: VllmClient | None = None,
    metrics: MetricsSink | None = None,
    config_path: Path | None = None,
    host_ram: Callable[[], float | None] | None = None,
) -> Engine:
    """An Engine (not yet started) over the config's GPU backend and runtimes, or over
    the ones given (fakes, a proxied engine)."""
    monitor = gpu if gpu is not None else await open_gpu_monitor(config.gpu)
    return Engine(
        config,
        gpu=monitor,
        runtimes=runtimes if runtimes is not None else build_runtimes(config),
        vllm=vllm or VllmClient(),
        config_path=config_path,
        metrics=metrics,
        # Fake backends on the simulated GPU park nothing in host RAM.
        host_ram=host_ram or (parkable_ram_gb if config.gpu.backend == "nvml" else None),
    )
