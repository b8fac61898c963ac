"""`modelctl watch` and `logs -f`: streams that outlive a restart of the daemon, saying
when it went away and when it answers again."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from modeld.cli.sentences import render_event
from modeld.client import Client, DaemonUnreachable, RpcError, call

# How often a lost daemon is tried again.
RECONNECT_EVERY_S = 1.0

Session = Callable[[Client, bool], Awaitable[bool]]


async def _stay_connected(path: Path, what: str, session: Session) -> None:
    """Run `session` on a connection until it says it is done. When the daemon goes away
    after answering (a restart), say so on stderr, reconnect once it answers again, say
    that, and run it again (told it is a reconnection); a daemon that never answered is
    exit 3 at once."""
    err = Console(stderr=True, soft_wrap=not sys.stderr.isatty())
    connected = False
    while True:
        try:
            async with Client(path) as client:
                if connected:
                    err.print(
                        f"[green]modelctl: modeld answers again on {path}; {what}[/]",
                        soft_wrap=True,
                    )
                again, connected = connected, True
                if await session(client, again):
                    return
                reason = "connection closed by modeld"
        except DaemonUnreachable as exc:
            if not connected:
                raise
            reason = exc.reason
        err.print(
            f"[yellow]modelctl: lost modeld ({escape(reason)}); what happens until it "
            f"answers again is missed; reconnecting every {RECONNECT_EVERY_S:g} s[/]",
            soft_wrap=True,
        )
        # Polled: another process's socket coming back sends this one no event.
        while True:
            await asyncio.sleep(RECONNECT_EVERY_S)
            if await _answers(path):
                break


async def watch(path: Path, console: Console, as_json: bool) -> None:
    """Print events as they come, across restarts of the daemon."""

    async def session(client: Client, again: bool) -> bool:
        async for event in await client.subscribe():
            render_event(console, event, as_json)
        return False  # the events end only with the connection

    await _stay_connected(path, "watching", session)


async def _answers(path: Path) -> bool:
    """Whether the daemon answers a ping on `path` now."""
    try:
        async with asyncio.timeout(RECONNECT_EVERY_S * 5):
            await call("ping", path)
    except (DaemonUnreachable, RpcError, TimeoutError, OSError):
        return False
    return True


async def follow(path: Path, model: str, lines: int, console: Console, as_json: bool) -> None:
    """Print the last lines, then each new one as the daemon pushes it (no polling),
    until the backend ends or Ctrl-C; across a restart of the daemon, from its last
    line again (which may repeat one)."""

    async def session(client: Client, again: bool) -> bool:
        async for line in client.follow(model, 1 if again else lines):
            if as_json:
                print(json.dumps({"model": model, "line": line}), flush=True)
            else:
                console.print(line, markup=False, highlight=False)
        return not client.closed  # the backend ended, not the connection

    await _stay_connected(path, f"following {model}", session)
