"""structlog setup: JSON lines for journald, a readable console on a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str = "info", json_output: bool | None = None) -> None:
    """Configure structlog; MODELD_LOG_LEVEL overrides `level`."""
    level = os.environ.get("MODELD_LOG_LEVEL", level).lower()
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
