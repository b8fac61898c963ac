"""The daemon's lifecycle: startup, serve until a signal, shutdown (like uvicorn)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog

from modeld import __version__
from modeld.access import AccessPolicy
from modeld.config import Config
from modeld.gpu import open_gpu_monitor
from modeld.health import HealthProbe
from modeld.rpc import RpcServer
from modeld.runtime.base import Runtime
from modeld.supervisor import Supervisor

log = structlog.get_logger("modeld.daemon")


def build_runtimes(config: Config) -> dict[str, Runtime]:
    """One runtime of each kind the configured models use."""
    runtimes: dict[str, Runtime] = {}
    kinds = {model.runtime for model in config.models.values()}
    if "docker" in kinds:
        from modeld.runtime.docker import DockerRuntime

        runtimes["docker"] = DockerRuntime()
    if "process" in kinds:
        from modeld.runtime.process import ProcessRuntime

        runtimes["process"] = ProcessRuntime()
    return runtimes


async def run_daemon(config: Config, socket_path: Path) -> None:
    """Start up, serve until SIGTERM or SIGINT, shut down; ModeldError if startup fails."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Signal handlers only set the event; the shutdown runs below, in order.
        loop.add_signal_handler(sig, stop.set)
    gpu = await open_gpu_monitor(config.gpu)
    supervisor = Supervisor(config, gpu, build_runtimes(config), HealthProbe())
    daemon = config.daemon
    server = RpcServer(
        supervisor,
        socket_path,
        daemon.socket_mode,
        daemon.socket_group,
        AccessPolicy(daemon.allow_uids, daemon.allow_groups),
        daemon.max_connections,
    )
    try:
        await supervisor.startup()
        await server.start()
        log.info(
            "daemon.ready",
            version=__version__,
            socket=str(socket_path),
            models=sorted(config.models),
            gpu=gpu.backend,
        )
        await stop.wait()
        log.info("daemon.stopping")
    finally:
        await server.close()
        await supervisor.shutdown()
        log.info("daemon.stopped")
