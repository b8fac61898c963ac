"""`modeld`: run the daemon. The only place that calls sys.exit."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from modeld import __version__
from modeld.config import load_config
from modeld.errors import ConfigError, ModeldError
from modeld.logs import configure_logging

# sysexits.h: systemd and operators can tell a bad config from a missing GPU or a crash.
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/modeld/modeld.toml")


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config, run the daemon; return the exit code."""
    parser = argparse.ArgumentParser(prog="modeld", description="The model supervisor daemon.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    parser.add_argument("--socket", type=Path, help="override [daemon] socket")
    parser.add_argument("--log-level", help="override [daemon] log_level")
    parser.add_argument("--version", action="version", version=f"modeld {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"modeld: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(args.log_level or config.daemon.log_level)
    from modeld.daemon import run_daemon

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


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
