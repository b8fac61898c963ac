"""Waiting for a backend to answer: health races the backend's exit and the deadline.

Each way the wait can end has its own outcome: healthy (return), exited while loading
(LoadFailed with the exit code and last lines), engine dead (LoadFailed), stalled
(LoadFailed: no new output line and no change of health for load_stall_timeout_s),
the overall deadline (OperationTimeout), or cancellation (propagated to whoever
cancelled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from modeld.adapters.runtime.base import Runtime
from modeld.adapters.vllm import Health, VllmClient
from modeld.core.config import ModelConfig
from modeld.core.errors import LoadFailed, OperationTimeout


async def until_healthy(
    model: ModelConfig, probe: VllmClient, interval_s: float, seen: Callable[[Health], None]
) -> None:
    """Probe `/health` until 200; LoadFailed on 503 (vLLM's engine died)."""
    while True:
        health = await probe.health(model.endpoint)
        seen(health)
        if health is Health.HEALTHY:
            return
        if health is Health.DEAD:
            raise LoadFailed(
                f"{model.name}: /health answered 503: the engine died while loading",
                model=model.name,
                reason="engine died",
            )
        await asyncio.sleep(interval_s)


class Progress:
    """When a loading backend last showed it was moving: a new output line, or a change
    of what /health says."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        self._health: Health | None = None

    def health(self, health: Health) -> None:
        """What /health said: a change is progress."""
        if health is not self._health:
            self._health = health
            self.at = time.monotonic()

    async def follow(self, runtime: Runtime, model: ModelConfig) -> None:
        """Each new line the backend prints is progress (vLLM logs each startup step)."""
        async for _ in runtime.follow(model, 1):
            self.at = time.monotonic()


async def until_stalled(progress: Progress, stall_s: float) -> None:
    """Return once nothing has moved for `stall_s` (a deadline that moves with progress:
    it sleeps until the soonest moment it could have passed, then looks again)."""
    while True:
        quiet = time.monotonic() - progress.at
        if quiet >= stall_s:
            return
        await asyncio.sleep(stall_s - quiet)


async def await_ready(
    model: ModelConfig,
    runtime: Runtime,
    probe: VllmClient,
    interval_s: float,
    seen: Callable[[Health], None],
) -> None:
    """Return once the backend answers health; raise as soon as it cannot any more."""
    timeout = model.load_timeout_s
    progress = Progress()

    def heard(health: Health) -> None:
        progress.health(health)
        seen(health)

    exited = asyncio.create_task(runtime.wait_exit(model))
    healthy = asyncio.create_task(until_healthy(model, probe, interval_s, heard))
    watched = [exited, healthy]
    stalled = None
    if model.load_stall_timeout_s is not None:
        stalled = asyncio.create_task(until_stalled(progress, model.load_stall_timeout_s))
        watched += [stalled, asyncio.create_task(progress.follow(runtime, model))]
    try:
        done, _ = await asyncio.wait(
            {exited, healthy, *(t for t in (stalled,) if t)},
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for task in watched:
            task.cancel()
        await asyncio.gather(*watched, return_exceptions=True)
    if healthy in done:
        healthy.result()
        return
    if stalled is not None and stalled in done and exited not in done:
        raise LoadFailed(
            f"{model.name}: stalled: no new output and no change of /health for "
            f"load_stall_timeout_s={model.load_stall_timeout_s:g}s",
            model=model.name,
            reason="stalled",
            stall_timeout_s=model.load_stall_timeout_s,
            last_lines=await runtime.logs(model),
        )
    if exited in done:
        status = exited.result()
        raise LoadFailed(
            f"{model.name}: backend exited with code {status.exit_code} while loading",
            model=model.name,
            reason="exited during load",
            exit_code=status.exit_code,
            last_lines=await runtime.logs(model),
        )
    raise OperationTimeout(
        f"{model.name} did not answer /health within load_timeout_s={timeout}s",
        model=model.name,
        load_timeout_s=timeout,
    )
