"""The daemon's lifecycle: startup, serve until a signal, shutdown (like uvicorn).

Signal handlers only set events; everything they ask for happens here, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from modeld import __version__
from modeld.core.config import Config, config_warnings
from modeld.core.errors import ModeldError, SocketInUse
from modeld.daemon.access import AccessPolicy
from modeld.daemon.listen import inherited_socket
from modeld.daemon.sdnotify import Notifier
from modeld.daemon.server import Limits, RpcServer
from modeld.daemon.signals import stop_and_reload
from modeld.engine.build import build_engine
from modeld.engine.engine import Engine
from modeld.engine.metrics import Metrics, serve_metrics

log = structlog.get_logger("modeld.daemon.run")


async def _every(interval_s: float, action: Callable[[], None]) -> None:
    while True:
        action()
        await asyncio.sleep(interval_s)


async def _report_status(supervisor: Engine, notifier: Notifier, interval_s: float) -> None:
    """Keep `systemctl status` current: on every transition, and as memory moves."""
    while True:
        notifier.status(supervisor.view.summary())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(supervisor.events.changed(), interval_s)


async def _serve_reloads(requested: asyncio.Event, supervisor: Engine, notifier: Notifier) -> None:
    """SIGHUP: re-read the config; an invalid one is logged and the old one stays."""
    while True:
        await requested.wait()
        requested.clear()
        notifier.reloading()
        try:
            await supervisor.reload(caller={"signal": signal.SIGHUP.value})
        except ModeldError as exc:
            log.error("config.reload_rejected", reason=exc.message, fields=exc.data.get("fields"))
        except Exception:  # a bug in one reload must not end the reloads that follow
            log.exception("config.reload_crashed")
        finally:
            notifier.ready(supervisor.view.summary())


async def run_daemon(config: Config, socket_path: Path, config_path: Path | None = None) -> None:
    """Start up, serve until SIGTERM or SIGINT, shut down; ModeldError if startup fails."""
    stop, reload_requested = stop_and_reload()
    notifier = Notifier()
    inherited = inherited_socket()
    for warning in config_warnings(config):
        log.warning("config.risk", warning=warning)
    daemon = config.daemon
    metrics = Metrics() if config.metrics.listen else None
    supervisor = await build_engine(config, metrics=metrics, config_path=config_path)
    server = RpcServer(
        supervisor,
        socket_path,
        daemon.socket_mode,
        daemon.socket_group,
        AccessPolicy(daemon.allow_uids, daemon.allow_groups),
        limits=Limits(
            max_connections=daemon.max_connections,
            per_uid=daemon.max_connections_per_uid,
            reserved=min(daemon.reserved_connections, daemon.max_connections),
            line_timeout_s=daemon.client_line_timeout_s,
            write_timeout_s=daemon.client_write_timeout_s,
        ),
    )
    background: list[asyncio.Task[Any]] = []
    metrics_runner: web.AppRunner | None = None
    try:
        await supervisor.startup()
        if metrics is not None and config.metrics.listen:
            metrics.watch(supervisor.view.status)
            try:
                metrics_runner = await serve_metrics(metrics, config.metrics.listen)
            except OSError as exc:
                raise SocketInUse(
                    f"metrics.listen {config.metrics.listen}: {exc.strerror}",
                    listen=config.metrics.listen,
                ) from None
        await server.start(inherited)
        notifier.ready(supervisor.view.summary())
        log.info(
            "daemon.ready",
            version=__version__,
            socket=server.address,
            activated=inherited is not None,
            models=sorted(config.models),
            gpu=config.gpu.backend,
        )
        jobs: list[Coroutine[Any, Any, Any]] = [
            _report_status(supervisor, notifier, daemon.poll_interval_s),
            _serve_reloads(reload_requested, supervisor, notifier),
            # In the background: the socket answers while preloaded models load.
            supervisor.models.preload(),
        ]
        if notifier.watchdog_interval_s:
            # From the event loop itself: a stuck loop stops the pings and systemd restarts us.
            jobs.append(_every(notifier.watchdog_interval_s, notifier.watchdog))
        background = [asyncio.create_task(job) for job in jobs]
        await stop.wait()
        log.info("daemon.stopping")
    finally:
        notifier.stopping()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await server.close(daemon.shutdown_timeout_s)
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await supervisor.shutdown()
        log.info("daemon.stopped")
