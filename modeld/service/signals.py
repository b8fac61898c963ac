"""The signals a long-running modeld process answers: handlers only set events."""

from __future__ import annotations

import asyncio
import signal


def stop_and_reload() -> tuple[asyncio.Event, asyncio.Event]:
    """Events set by SIGTERM or SIGINT (stop) and by SIGHUP (reload), on the running loop."""
    loop = asyncio.get_running_loop()
    stop, reload_requested = asyncio.Event(), asyncio.Event()
    for sig, event in (
        (signal.SIGTERM, stop),
        (signal.SIGINT, stop),
        (signal.SIGHUP, reload_requested),
    ):
        loop.add_signal_handler(sig, event.set)
    return stop, reload_requested
