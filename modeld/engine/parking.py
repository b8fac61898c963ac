"""Parking: vLLM's sleep mode. Park a model (weights to host RAM), wake it (outside the
lock, like a load), fall back to a stop or a cold start when the backend will not, and
park or stop models that have served nothing for idle_unload_after_s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from modeld.adapters.vllm import Health
from modeld.core.errors import GpuUnavailable, LoadFailed, ModeldError, SleepModeFailed
from modeld.core.states import State
from modeld.engine.learning import Learning
from modeld.engine.lifecycle import Lifecycle
from modeld.engine.model import Model
from modeld.engine.operations import IDLE_UNLOAD, Operations
from modeld.wire.events import IdleUnloaded, ParkFailed, WakeFailed, Waking

log = structlog.get_logger("modeld.engine.parking")


class Parking:
    """Parks, wakes and idle-unloads models with sleep mode."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        operations: Operations,
        learning: Learning,
        serving: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._life = lifecycle
        self._ops = operations
        self._learning = learning
        # Whether a model serves requests (leases): then it is never idle.
        self._serving = serving

    def may_park(self, record: Model) -> bool:
        """Sleep mode is on for it and its weights fit in what is left of the RAM budget."""
        life = self._life
        return (
            record.config.sleep_mode
            and life.config.daemon.park_ram_gb > 0
            and record.config.parked_ram_gb <= life.ledger.ram_free_gb(life.records.values())
        )

    async def park(self, record: Model, reason: str) -> bool:
        """Park a running model with vLLM's sleep mode (weights to host RAM); stop it if the
        backend will not sleep. True if it was parked."""
        life = self._life
        endpoint = record.config.endpoint
        try:
            await life.vllm.sleep(endpoint, record.config.stop_timeout_s)
            if not await life.vllm.is_sleeping(endpoint):
                raise SleepModeFailed("/sleep answered 200 but /is_sleeping says it is awake")
        except SleepModeFailed as exc:
            log.warning("park.failed", model=record.name, error=exc.message, fallback="stop")
            life.events.publish(ParkFailed(model=record.name, error=exc.message))
            await life.stop_model(record, f"{reason}; parking failed: {exc.message}")
            return False
        record.parked(reason)
        # What it keeps is measured, never assumed: plans count on it from now on.
        with contextlib.suppress(GpuUnavailable):
            reading = await life.ledger.read(life.records.values())
            if measured := reading.per_model.get(record.name):
                self._learning.parked(record, dict(measured))
        return True

    def begin_wake(self, record: Model) -> None:
        """Begin waking a parked model: it is `loading` until the wake task ends."""
        record.begin_wake()
        self._life.events.publish(Waking(model=record.name))
        record.watching(asyncio.create_task(self._wake(record), name=f"wake-{record.name}"))

    async def _wake(self, record: Model) -> ModeldError | None:
        """Wake (POST /wake_up, then /is_sleeping false and /health 200), outside the
        lock; if it will not wake, stop it and cold-start it instead (under the lock), and
        say why. The outcome, like a load's: None, or the error."""
        life, config = self._life, record.config
        started = time.monotonic()
        generation = record.generation
        try:
            await life.vllm.wake_up(config.endpoint, config.wake_timeout_s)
            if await life.vllm.is_sleeping(config.endpoint):
                raise SleepModeFailed("/wake_up answered 200 but /is_sleeping says it sleeps")
            health = await life.vllm.health(config.endpoint)
            record.saw_health(health)
            if health is not Health.HEALTHY:
                raise SleepModeFailed(f"/health says {health.value} after waking")
        except SleepModeFailed as exc:
            return await self._cold_start_instead(record, generation, exc)
        if not record.is_current(generation):
            return LoadFailed(f"{record.name}: changed while waking", model=record.name)
        record.woke(time.monotonic() - started)
        # Its weights are back on the GPU: refresh what `status` shows.
        await life.measured()
        return None

    async def _cold_start_instead(
        self, record: Model, generation: int, exc: SleepModeFailed
    ) -> ModeldError | None:
        life = self._life
        record.wake_fell_back(exc.message)
        log.warning("wake.failed", model=record.name, error=exc.message, fallback="cold start")
        life.events.publish(WakeFailed(model=record.name, error=exc.message, fallback="cold start"))
        async with self._ops.lock:
            if not record.is_current(generation):
                return LoadFailed(f"{record.name}: changed while waking", model=record.name)
            record.watching(None)  # this task is no longer the load a stop would cancel
            try:
                await life.stop_model(record, f"wake failed: {exc.message}; cold start instead")
                await life.ledger.wait_for_room(record, life.records.values())
                await life.start_model(record)
            except ModeldError as failure:
                return failure
        load = record.load_task
        return await asyncio.shield(load) if load is not None else None

    def seen_activity(self, record: Model, generation: int) -> None:
        """After a reading of a running model's request metrics: unload it once
        idle_unload_after_s passed with no request finished, none in flight and none
        queued."""
        idle_after = record.config.idle_unload_after_s
        if not record.is_current(generation) or idle_after is None:
            return
        now = time.monotonic()
        if now - record.usage.last_active >= idle_after and record.usage.unload_task is None:
            record.unloading(
                asyncio.create_task(self._idle_unload(record), name=f"idle-unload-{record.name}")
            )

    async def _idle_unload(self, record: Model) -> None:
        idle_after = record.config.idle_unload_after_s or 0.0
        try:
            idle_s = round(time.monotonic() - record.usage.last_active)
            async with self._ops.operation(IDLE_UNLOAD, record, {"idle_s": idle_s}):
                # A switch to it, or a request, may have come while this waited its turn.
                if record.state is not State.RUNNING or self._serving(record.name):
                    return
                if time.monotonic() - record.usage.last_active < idle_after:
                    return
                reason = f"idle for {idle_s}s (idle_unload_after_s={idle_after:g})"
                if self.may_park(record):
                    # A backend that will not sleep is stopped by park itself.
                    action = "parked" if await self.park(record, reason) else "stopped"
                else:
                    await self._life.stop_model(record, reason)
                    action = "stopped"
                self._life.events.publish(IdleUnloaded(model=record.name, action=action))
        except ModeldError:
            pass  # logged by the operation; the monitor tries again at its next pass
        finally:
            record.unloading(None)
