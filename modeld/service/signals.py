"""The signals a long-running modeld process answers, the same for the daemon and the
gateway (as uvicorn does): handlers only set events. SIGTERM or SIGINT asks for a
graceful stop (answers in flight may finish, up to the process's shutdown timeout); a
second one forces the exit, cutting that wait short; SIGHUP asks for a reload."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from modeld.service.sdnotify import Notifier

log = structlog.get_logger("modeld.service.signals")


@dataclass(frozen=True)
class Signals:
    """What the signals have asked for so far (a service built without handlers, as the
    tests build one, gets events nothing sets: it is stopped by a call)."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # A second SIGTERM or SIGINT: stop waiting for what is in flight.
    force: asyncio.Event = field(default_factory=asyncio.Event)
    reload: asyncio.Event = field(default_factory=asyncio.Event)


def handle_signals() -> Signals:
    """Install the handlers on the running loop; the events they set."""
    loop = asyncio.get_running_loop()
    asked = Signals()

    def stopping() -> None:
        (asked.force if asked.stop.is_set() else asked.stop).set()

    loop.add_signal_handler(signal.SIGTERM, stopping)
    loop.add_signal_handler(signal.SIGINT, stopping)
    loop.add_signal_handler(signal.SIGHUP, asked.reload.set)
    return asked


async def unless_forced(shutdown: Awaitable[None], force: asyncio.Event) -> None:
    """Run `shutdown` to its end, or until `force` is set (then it is cancelled, and what
    it was waiting for ends with the process)."""
    closing = asyncio.ensure_future(shutdown)
    forced = asyncio.ensure_future(force.wait())
    try:
        await asyncio.wait({closing, forced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
    if not closing.done():
        log.warning("shutdown.forced", reason="a second SIGTERM or SIGINT")
        closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)


async def reload_on_sighup(
    requested: asyncio.Event,
    reload: Callable[[], Awaitable[None]],
    notifier: Notifier,
    status: Callable[[], str],
) -> None:
    """The one SIGHUP loop of both processes: each time `requested` is set, `reload()`
    once (SIGHUPs that come meanwhile ask for one more after it), telling systemd it
    reloads and then `status()`; a reload that crashes is logged and the next one
    still runs."""
    while True:
        await requested.wait()
        requested.clear()
        notifier.reloading()
        try:
            await reload()
        except Exception:  # a bug in one reload must not end the reloads that follow
            log.exception("reload.crashed")
        finally:
            notifier.ready(status())
