"""The Daemon: an Engine behind the socket server, with the metrics endpoint, systemd's
notifications and SIGHUP reloads; startup / serve / shutdown, like uvicorn's Server.

Signal handlers only set events; everything they ask for happens here, in order. The
entry point, the tests and the benchmarks build it the same way:
`Daemon(config, engine=build_engine(...), socket_path=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from modeld import __version__
from modeld.core.config import Config
from modeld.core.config_checks import config_warnings
from modeld.core.errors import ModeldError, SocketInUse
from modeld.daemon.access import AccessPolicy
from modeld.daemon.listen import inherited_socket
from modeld.daemon.server import Limits, RpcServer, limits_for
from modeld.engine.build import build_engine
from modeld.engine.engine import Engine
from modeld.engine.metrics import Metrics, serve_metrics
from modeld.service.sdnotify import Notifier
from modeld.service.signals import Signals, handle_signals, reload_on_sighup, unless_forced

log = structlog.get_logger("modeld.daemon.run")


class Daemon:
    """One daemon: its Engine, its socket, its metrics endpoint, systemd's view of it."""

    def __init__(
        self,
        config: Config,
        *,
        engine: Engine,
        socket_path: Path,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        notifier: Notifier | None = None,
        signals: Signals | None = None,
    ) -> None:
        daemon = config.daemon
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.notifier = notifier or Notifier()
        self.server = RpcServer(
            engine,
            socket_path,
            daemon.socket_mode,
            daemon.socket_group,
            AccessPolicy(daemon.allow_uids, daemon.allow_groups),
            limits=limits or limits_for(daemon),
        )
        # What SIGTERM, SIGINT and SIGHUP asked for (run_daemon installs the handlers).
        self.signals = signals or Signals()
        self._metrics_runner: web.AppRunner | None = None
        self._background: list[asyncio.Task[Any]] = []

    async def startup(self, inherited: socket.socket | None = None) -> None:
        """Start the engine (read the GPU, adopt what runs), the metrics endpoint and the
        socket (systemd's, when it passed one); tell systemd we are ready; begin the
        background jobs (status line, reloads, preload, watchdog)."""
        config, engine, notifier = self.config, self.engine, self.notifier
        await engine.startup()
        if self.metrics is not None and config.metrics.listen:
            self.metrics.watch(engine.view.status)
            try:
                self._metrics_runner = await serve_metrics(self.metrics, config.metrics.listen)
            except OSError as exc:
                raise SocketInUse(
                    f"metrics.listen {config.metrics.listen}: {exc.strerror}",
                    listen=config.metrics.listen,
                ) from None
        await self.server.start(inherited)
        notifier.ready(engine.view.summary())
        log.info(
            "daemon.ready",
            version=__version__,
            socket=self.server.address,
            activated=inherited is not None,
            models=sorted(config.models),
            gpu=config.gpu.backend,
        )
        jobs: list[Coroutine[Any, Any, Any]] = [
            self._report_status(),
            self._serve_reloads(),
            # In the background: the socket answers while preloaded models load.
            engine.models.preload(),
        ]
        if notifier.watchdog_interval_s:
            # From the event loop itself: a stuck loop stops the pings and systemd restarts us.
            jobs.append(_every(notifier.watchdog_interval_s, notifier.watchdog))
        self._background = [asyncio.create_task(job) for job in jobs]

    async def serve(self) -> None:
        """Serve until a stop is asked for (SIGTERM or SIGINT)."""
        await self.signals.stop.wait()
        log.info("daemon.stopping")

    async def shutdown(self) -> None:
        """Stop the background jobs, close the socket (letting calls in flight finish, up
        to shutdown_timeout_s; a call waiting on a load is answered at once), the metrics
        endpoint, then the engine."""
        self.notifier.stopping()
        self.engine.closing()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.server.close(self.config.daemon.shutdown_timeout_s)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await self.engine.shutdown()
        log.info("daemon.stopped")

    async def _report_status(self) -> None:
        """Keep `systemctl status` current: on every transition, and as memory moves."""
        while True:
            self.notifier.status(self.engine.view.summary())
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancellation that arrives as the event does, and this loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.daemon.poll_interval_s):
                    await self.engine.events.changed()

    async def _serve_reloads(self) -> None:
        """SIGHUP: re-read the config; an invalid one is logged and the old one stays."""
        await reload_on_sighup(
            self.signals.reload, self._reload, self.notifier, self.engine.view.summary
        )

    async def _reload(self) -> None:
        try:
            await self.engine.reload(caller={"signal": signal.SIGHUP.value})
        except ModeldError as exc:
            log.error("config.reload_rejected", reason=exc.message, fields=exc.data.get("fields"))


async def _every(interval_s: float, action: Callable[[], None]) -> None:
    while True:
        action()
        await asyncio.sleep(interval_s)


async def run_daemon(config: Config, socket_path: Path, config_path: Path | None = None) -> None:
    """Start up, serve until SIGTERM or SIGINT, shut down (cut short by a second one);
    ModeldError if startup fails."""
    asked = handle_signals()
    for warning in config_warnings(config):
        log.warning("config.risk", warning=warning)
    metrics = Metrics() if config.metrics.listen else None
    engine = await build_engine(config, metrics=metrics, config_path=config_path)
    daemon = Daemon(config, engine=engine, socket_path=socket_path, metrics=metrics, signals=asked)
    try:
        await daemon.startup(inherited_socket())
        await daemon.serve()
    finally:
        # A second SIGTERM cuts the wait for calls in flight and backends' stops short.
        await unless_forced(daemon.shutdown(), asked.force)
