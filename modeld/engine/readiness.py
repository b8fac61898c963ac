"""Waiting for a backend to answer: health races the backend's exit and the deadline.

Each way the wait can end has its own outcome: healthy (return), exited while loading
(LoadFailed with the exit code and last lines), engine dead (LoadFailed), deadline
(OperationTimeout), or cancellation (propagated to whoever cancelled).
"""

from __future__ import annotations

import asyncio
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


async def await_ready(
    model: ModelConfig,
    runtime: Runtime,
    probe: VllmClient,
    interval_s: float,
    seen: Callable[[Health], None],
) -> None:
    """Return once the backend answers health; raise as soon as it cannot any more."""
    timeout = model.load_timeout_s
    exited = asyncio.create_task(runtime.wait_exit(model))
    healthy = asyncio.create_task(until_healthy(model, probe, interval_s, seen))
    try:
        done, _ = await asyncio.wait(
            {exited, healthy}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        exited.cancel()
        healthy.cancel()
        await asyncio.gather(exited, healthy, return_exceptions=True)
    if healthy in done:
        healthy.result()
        return
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
