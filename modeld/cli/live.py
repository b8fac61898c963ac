"""What modelctl shows as it happens: `top`'s dashboard, redrawn on every event, and a
switch's progress bar driven by the steps the daemon pushes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from modeld.cli.render import dashboard
from modeld.cli.sentences import describe_step, event_sentence
from modeld.client import Client, call
from modeld.wire.events import AnyEvent, StateChanged


async def top(path: Path, console: Console, once: bool) -> None:
    """A live dashboard, redrawn on every event and once a second."""
    async with Client(path) as query:
        status = await query.status()
        if once:
            console.print(dashboard(status))
            return
        queue: asyncio.Queue[AnyEvent] = asyncio.Queue()

        async def listen() -> None:
            async with Client(path) as subscriber:
                async for event in subscriber.events():
                    queue.put_nowait(event)

        listener = asyncio.create_task(listen())
        last: str | None = None
        try:
            with Live(dashboard(status), console=console, refresh_per_second=4) as live:
                while not listener.done():
                    try:
                        async with asyncio.timeout(1.0):
                            event = await queue.get()
                        last = event_sentence(event)
                    except TimeoutError:
                        pass
                    live.update(dashboard(await query.status(), last))
            listener.result()  # the daemon went away: say so like any other command
        finally:
            listener.cancel()


async def switch_with_progress(
    console: Console, path: Path, op: str, model: str, params: dict[str, object]
) -> Any:
    """Run a waiting call while its steps, pushed as events on a second connection, drive
    a progress bar: the current step, and loading time against the estimate."""
    async with Client(path) as watcher:
        view = (await watcher.status()).models.get(model)
        load_estimate = view.estimated_load_time_seconds if view is not None else None
        parked = view.parked if view is not None else None
        wake_estimate = parked.estimated_wake_seconds if parked is not None else None
        events = await watcher.subscribe()
        request = asyncio.create_task(call(op, path, model=model, **params))
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            bar = progress.add_task(f"{op} {model}", total=None)
            estimate: float | None = None
            loading_since: float | None = None
            pushed: asyncio.Future[AnyEvent] = asyncio.ensure_future(anext(events))
            try:
                while not request.done():
                    await asyncio.wait(
                        {request, pushed}, timeout=0.2, return_when="FIRST_COMPLETED"
                    )
                    if pushed.done():
                        if pushed.exception() is not None:
                            await asyncio.wait({request})  # the stream ended: wait quietly
                            break
                        event = pushed.result()
                        pushed = asyncio.ensure_future(anext(events))
                        step = describe_step(event, model)
                        if step is not None:
                            progress.update(bar, description=step)
                        if isinstance(event, StateChanged) and event.model == model:
                            loading = event.to_state == "loading"
                            loading_since = time.monotonic() if loading else None
                            waking = event.reason == "wake"
                            estimate = (wake_estimate if waking else load_estimate) or None
                    if loading_since is not None and estimate:
                        # Elapsed against the estimate; a slow load stretches the bar.
                        elapsed = time.monotonic() - loading_since
                        progress.update(bar, total=max(estimate, elapsed), completed=elapsed)
            finally:
                pushed.cancel()
    return await request
