"""`modeld-gateway`: run the HTTP gateway. A GatewayService has the Daemon's lifecycle
(and uvicorn's): startup, serve until SIGTERM/SIGINT, shutdown; SIGHUP re-reads the API
keys (callers' and backends'). Signal handlers only set events; sys.exit only in main()."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from modeld import __version__
from modeld.core.addresses import is_loopback, split_host_port
from modeld.core.backend_keys import backend_keys
from modeld.core.config import Config, load_config
from modeld.core.errors import ConfigError
from modeld.core.gateway_keys import Key, new_key, read_keys
from modeld.gateway.app import Gateway, GatewayServer
from modeld.gateway.auth import BackendKeys, Keys
from modeld.gateway.link import DaemonLink
from modeld.service.logs import configure_logging
from modeld.service.sdnotify import Notifier
from modeld.service.signals import Signals, handle_signals, reload_on_sighup, unless_forced

log = structlog.get_logger("modeld.gateway")

EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/modeld/modeld.toml")
# How long a stop waits for answers in flight before it cuts them.
SHUTDOWN_TIMEOUT_S = 30.0


class GatewayService:
    """One gateway process: its Gateway listening, systemd's view of it, and SIGHUP's
    reloads of the keys; startup / serve / shutdown, like the Daemon (and uvicorn's
    Server)."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        socket: Path,
        *,
        notifier: Notifier | None = None,
        signals: Signals | None = None,
    ) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        # What SIGTERM, SIGINT and SIGHUP asked for (run_gateway installs the handlers).
        self.signals = signals or Signals()
        accepted = Keys(read_keys(config.gateway, str(config_path)))
        upstream = BackendKeys(backend_keys(config, str(config_path)))
        link = DaemonLink(socket, frozenset(config.models), config.aliases())
        self.gateway = Gateway(config.gateway, link, accepted, upstream)
        self.server = GatewayServer(self.gateway, SHUTDOWN_TIMEOUT_S)
        self._background: list[asyncio.Task[None]] = []

    async def startup(self, listen: str) -> None:
        """Listen on HOST:PORT (OSError when it is taken) and follow the daemon's events;
        tell systemd we are ready; begin answering SIGHUP."""
        host, port = split_host_port(listen)
        if not self.gateway.keys.required and not is_loopback(host):
            log.warning(
                "gateway.open",
                listen=listen,
                hint="no keys: anyone who reaches this address can load and switch models",
            )
        await self.server.start(host, port)
        self.notifier.ready(f"listening on {listen}")
        log.info(
            "gateway.ready",
            version=__version__,
            listen=listen,
            socket=str(self.gateway.link.socket),
            keys=self.gateway.keys.required,
        )
        reloads = reload_on_sighup(
            self.signals.reload, self._reload_keys, self.notifier, lambda: "keys reloaded"
        )
        self._background = [asyncio.create_task(reloads)]

    async def serve(self) -> None:
        """Serve until a stop is asked for (SIGTERM or SIGINT)."""
        await self.signals.stop.wait()
        log.info("gateway.stopping")

    async def shutdown(self) -> None:
        """Stop answering SIGHUP, stop listening, let answers in flight end (up to
        SHUTDOWN_TIMEOUT_S), close the daemon connections."""
        self.notifier.stopping()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.server.close()
        log.info("gateway.stopped")

    async def _reload_keys(self) -> None:
        """SIGHUP: read the config's keys again, callers' and backends' (other settings
        take a restart). Fails closed: a key file missing, unreadable or emptied, or a
        config left with no key where there were some, keeps every key as it was (an
        error and a metric)."""
        gateway = self.gateway
        try:
            # Files read off the loop: requests in flight go on meanwhile.
            callers, backends = await asyncio.to_thread(_read_all_keys, self.config_path)
            gateway.keys.replace(callers)
            gateway.backend_keys.replace(backends)
            log.info("gateway.keys_reloaded", keys=len(callers))
        except ConfigError as exc:
            gateway.metrics.key_reload_failures.inc()
            log.error("gateway.reload_rejected", reason=exc.message, kept="the keys loaded")


async def run_gateway(config: Config, config_path: Path, listen: str, socket: Path) -> None:
    """Start up, serve until SIGTERM or SIGINT, shut down (answers in flight may finish,
    up to SHUTDOWN_TIMEOUT_S; a second SIGTERM or SIGINT cuts that short)."""
    asked = handle_signals()
    service = GatewayService(config, config_path, socket, signals=asked)
    try:
        await service.startup(listen)
        await service.serve()
    finally:
        await unless_forced(service.shutdown(), asked.force)


def _read_all_keys(config_path: Path) -> tuple[list[Key], dict[str, str]]:
    """The callers' keys and the backends' keys, as the config names them now."""
    config = load_config(config_path)
    return read_keys(config.gateway, str(config_path)), backend_keys(config, str(config_path))


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config, serve; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="modeld-gateway",
        description="OpenAI-compatible HTTP gateway to modeld: routes each request to "
        "the model its body names, loading or switching as needed.",
        epilog="exit codes: 0 stopped; 69 cannot listen (address in use); 78 invalid config",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    parser.add_argument("--listen", help="HOST:PORT, overrides [gateway] listen")
    parser.add_argument("--socket", type=Path, help="modeld's socket, overrides the config")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    parser.add_argument("--version", action="version", version=f"modeld-gateway {__version__}")
    parser.add_argument(
        "--new-key", action="store_true", help="print a new random key for a key file and exit"
    )
    args = parser.parse_args(argv)
    if args.new_key:
        print(new_key())
        return 0
    try:
        config = load_config(args.config)
        read_keys(config.gateway, str(args.config))
        backend_keys(config, str(args.config))
        listen = args.listen or config.gateway.listen
        split_host_port(listen)
    except ConfigError as exc:
        print(f"modeld-gateway: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError:
        print(f"modeld-gateway: --listen {args.listen!r}: must be HOST:PORT", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(args.log_level or config.daemon.log_level)
    socket = args.socket or config.gateway.socket or config.daemon.socket
    try:
        asyncio.run(run_gateway(config, args.config, listen, socket))
    except OSError as exc:
        log.error("gateway.cannot_listen", listen=listen, reason=exc.strerror or str(exc))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        pass
    return 0


def main() -> None:
    """Console entry point."""
    sys.exit(run())
