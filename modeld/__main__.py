"""`modeld`: run the daemon. The only place that calls sys.exit."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from modeld import __version__
from modeld.adapters.gpu import open_gpu_monitor
from modeld.adapters.store import Learned, Store
from modeld.core.config import Config, load_config
from modeld.core.config_checks import never_fits
from modeld.core.errors import ConfigError, ModeldError
from modeld.daemon.checkconfig import explain, problems, schema
from modeld.service.logs import configure_logging

# sysexits.h: systemd and operators can tell a bad config from a missing GPU or a crash.
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/modeld/modeld.toml")


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config, run the daemon; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="modeld",
        description="The model supervisor daemon.",
        epilog="exit codes: 0 stopped (or the config is valid), 69 cannot start (NVML, socket "
        "or port in use), 70 crashed, 78 invalid config (file and field named)",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "check-config", "config-schema", "api-schema"),
        help="run the daemon (default); check-config: validate and explain the config "
        "without starting anything; config-schema: print the config's JSON Schema; "
        "api-schema: print the JSON-RPC API's methods, params and results as JSON Schema",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    parser.add_argument("--socket", type=Path, help="override [daemon] socket")
    parser.add_argument("--log-level", help="override [daemon] log_level")
    parser.add_argument("--version", action="version", version=f"modeld {__version__}")
    args = parser.parse_args(argv)
    if args.command == "config-schema":
        print(schema(), end="")
        return 0
    if args.command == "api-schema":
        from modeld.daemon.apischema import api_schema_text

        print(api_schema_text(), end="")
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"modeld: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        totals = asyncio.run(_device_totals(config))
        print(f"{args.config}: valid")
        for line in explain(config, totals, _learned(config)):
            print(line)
        found = [f"{args.config}: {p}" for p in never_fits(config.models, totals or {})]
        found += problems(config, str(args.config))
        if found:
            # Valid TOML, but it would fail once run: say so, and fail.
            for problem in found:
                print(f"modeld: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    configure_logging(args.log_level or config.daemon.log_level)
    from modeld.daemon.run import run_daemon

    try:
        asyncio.run(run_daemon(config, args.socket or config.daemon.socket, args.config))
    except ConfigError as exc:
        print(f"modeld: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except ModeldError as exc:
        print(f"modeld: cannot start: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 0
    except Exception:
        # A crash, as opposed to a startup failure: systemd's Restart= takes it from here.
        structlog.get_logger("modeld").exception("daemon.crashed")
        return EXIT_SOFTWARE
    return 0


async def _device_totals(config: Config) -> dict[int, float] | None:
    """Device sizes: the simulated GPU's, or NVML's where a driver answers (read only)."""
    if config.gpu.backend == "simulated":
        return dict(enumerate(config.gpu.devices_gb))
    try:
        monitor = await open_gpu_monitor(config.gpu)
        try:
            reading = await monitor.read([])
        finally:
            await monitor.close()
    except ModeldError:
        return None
    return {d.index: d.total_gb for d in reading.devices}


def _learned(config: Config) -> Learned:
    """The figures learned on this host, if the state file can be read."""
    return Store(config.daemon.state_dir).load()


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
