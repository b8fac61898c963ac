"""What aiohttp's server says about requests it could not serve, in one short line each.

aiohttp logs a malformed request (folded header lines, bare LF line endings, a header
too long) with its traceback through the standard `logging` module, and the exception's
text quotes the raw request: an `Authorization` header, admin keys included, went to the
log, and 200 requests with one bad 8 KB header grew it by 3.3 MB. The gateway gives
aiohttp this logger instead: one line per refused request, with the kind of error and
the peer, never a header value, a message or a traceback; a handler that crashed gets
its exception's type and where it was raised (the message may quote the caller). At
most LINES_PER_MINUTE lines a minute; then one line says how many were not written.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog

LINES_PER_MINUTE = 30
WINDOW_S = 60.0
log = structlog.get_logger("modeld.gateway.http")


class RequestErrors(logging.Logger):
    """The logger aiohttp's request handler is given (its `logger` argument)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("modeld.gateway.http")
        self._clock = clock
        self._window_start = clock()
        self._written = 0
        self._dropped = 0

    def _allowed(self) -> bool:
        now = self._clock()
        if now - self._window_start >= WINDOW_S:
            if self._dropped:
                log.warning("gateway.http_errors_not_logged", count=self._dropped)
            self._window_start, self._written, self._dropped = now, 0, 0
        if self._written >= LINES_PER_MINUTE:
            self._dropped += 1
            return False
        self._written += 1
        return True

    def _line(self, msg: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._allowed():
            return
        exc = kwargs.get("exc_info")
        error = exc if isinstance(exc, BaseException) else None
        text = str(msg)
        peer = args[0] if args and text.startswith("Error handling request from") else None
        if peer is not None:
            # A request aiohttp could not parse, or refused: the kind of error alone.
            log.info("gateway.bad_request", error=type(error).__name__, peer=str(peer))
            return
        where = None
        if error is not None and (frames := traceback.extract_tb(error.__traceback__)):
            last = frames[-1]
            where = f"{last.filename}:{last.lineno} in {last.name}"
        log.error(
            "gateway.handler_failed",
            error=type(error).__name__ if error is not None else None,
            what=text[:80],
            where=where,
        )

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """A malformed request, or a handler that raised: one short line."""
        self._line(msg, args, kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """As exception()."""
        self._line(msg, args, kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """As exception()."""
        self._line(msg, args, kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """aiohttp's debug lines (non-HTTP bytes on the port, premature hang-ups): kept
        out of the log; a hostile peer could send them without end."""
