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
from modeld.engine.backends import Backends
from modeld.engine.learning import Learning
from modeld.engine.model import Model
from modeld.engine.operations import IDLE_UNLOAD, Operations
from modeld.engine.probes import probe
from modeld.wire.events import IdleUnloaded, ParkFailed, WakeFailed, Waking

log = structlog.get_logger("modeld.engine.parking")


class Parking:
    """Parks, wakes and idle-unloads models with sleep mode."""

    def __init__(
        self,
        backends: Backends,
        operations: Operations,
        learning: Learning,
        serving: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._backends = backends
        self._registry = backends.registry
        self._ops = operations
        self._learning = learning
        # Whether a model serves requests (leases): then it is never idle.
        self._serving = serving

    def may_park(self, model: Model) -> bool:
        """Sleep mode is on for it and its weights fit in what is left of the RAM budget."""
        return (
            model.config.sleep_mode
            and self._registry.config.daemon.park_ram_gb > 0
            and model.config.parked_ram_gb
            <= self._backends.ledger.ram_free_gb(self._registry.models.values())
        )

    async def park(self, model: Model, reason: str) -> bool:
        """Park a running model with vLLM's sleep mode (weights to host RAM); stop it if the
        backend will not sleep. True if it was parked."""
        endpoint = model.config.endpoint
        try:
            await self._backends.vllm.sleep(endpoint, model.config.stop_timeout_s)
            if not await self._backends.vllm.is_sleeping(endpoint):
                raise SleepModeFailed("/sleep answered 200 but /is_sleeping says it is awake")
        except SleepModeFailed as exc:
            log.warning("park.failed", model=model.name, error=exc.message, fallback="stop")
            self._registry.events.publish(ParkFailed(model=model.name, error=exc.message))
            await self._backends.stop_model(model, f"{reason}; parking failed: {exc.message}")
            return False
        model.parked(reason)
        # What it keeps is measured, never assumed: plans count on it from now on.
        with contextlib.suppress(GpuUnavailable):
            reading = await self._backends.ledger.read(self._registry.models.values())
            if measured := reading.per_model.get(model.name):
                self._learning.parked(model, dict(measured))
        return True

    def begin_wake(self, model: Model) -> None:
        """Begin waking a parked model: it is `loading` until the wake task ends."""
        model.begin_wake()
        self._registry.events.publish(Waking(model=model.name))
        model.watching(asyncio.create_task(self._wake(model), name=f"wake-{model.name}"))

    async def _wake(self, model: Model) -> ModeldError | None:
        """Wake (POST /wake_up, then /is_sleeping false and /health 200), outside the
        lock; if it will not wake, stop it and cold-start it instead (under the lock), and
        say why. The outcome, like a load's: None, or the error."""
        config = model.config
        started = time.monotonic()
        generation = model.generation
        # The wake canary: its greedy token before it slept (a token probe's answer).
        expected = model.usage.probe_answer if config.probe == "token" else None
        try:
            await self._backends.vllm.wake_up(config.endpoint, config.wake_timeout_s)
            if await self._backends.vllm.is_sleeping(config.endpoint):
                raise SleepModeFailed("/wake_up answered 200 but /is_sleeping says it sleeps")
            health = await self._backends.vllm.health(config.endpoint)
            model.saw_health(health)
            if health is not Health.HEALTHY:
                raise SleepModeFailed(f"/health says {health.value} after waking")
            if (refused := await probe(self._backends.vllm, model)) is not None:
                raise SleepModeFailed(f"woke, but {refused.data['reason']}")
            if (wrong := await self._woke_wrong(model, expected)) is not None:
                raise SleepModeFailed(wrong, canary=True)
        except SleepModeFailed as exc:
            return await self._cold_start_instead(model, generation, exc)
        if not model.is_current(generation):
            return LoadFailed(f"{model.name}: changed while waking", model=model.name)
        model.woke(time.monotonic() - started)
        # Its weights are back on the GPU: refresh what `status` shows.
        await self._backends.measured()
        return None

    async def _woke_wrong(self, model: Model, expected: str | None) -> str | None:
        """The wake canary: a woken model whose greedy token for the probe's fixed prompt
        is not the one it gave before it slept (vLLM has woken with corrupted weights or
        adapters, answering without failing) is checked once more, then said wrong."""
        if expected is None or model.usage.probe_answer == expected:
            return None
        first = model.usage.probe_answer
        again = await probe(self._backends.vllm, model)
        if again is None and model.usage.probe_answer == expected:
            return None  # a tie between two tokens flipped once; corruption stays
        return f"woke wrong: answered {first!r} where it answered {expected!r} before it slept"

    async def _cold_start_instead(
        self, model: Model, generation: int, exc: SleepModeFailed
    ) -> ModeldError | None:
        model.wake_fell_back(exc.message)
        log.warning("wake.failed", model=model.name, error=exc.message, fallback="cold start")
        self._registry.events.publish(
            WakeFailed(model=model.name, error=exc.message, fallback="cold start")
        )
        async with self._ops.lock:
            if not model.is_current(generation):
                return LoadFailed(f"{model.name}: changed while waking", model=model.name)
            model.watching(None)  # this task is no longer the load a stop would cancel
            try:
                why = (
                    f"{exc.message}: restarted cold"
                    if exc.data.get("canary")
                    else f"wake failed: {exc.message}; cold start instead"
                )
                await self._backends.stop_model(model, why)
                await self._backends.ledger.wait_for_room(model, self._registry.models.values())
                await self._backends.start_model(model)
            except ModeldError as failure:
                return failure
        load = model.load_task
        return await asyncio.shield(load) if load is not None else None

    def seen_activity(self, model: Model, generation: int) -> None:
        """After a reading of a running model's request metrics: unload it once
        idle_unload_after_s passed with no request finished, none in flight and none
        queued."""
        idle_after = model.config.idle_unload_after_s
        if not model.is_current(generation) or idle_after is None:
            return
        now = time.monotonic()
        if now - model.usage.last_active >= idle_after and model.usage.unload_task is None:
            model.unloading(
                asyncio.create_task(self._idle_unload(model), name=f"idle-unload-{model.name}")
            )

    async def _idle_unload(self, model: Model) -> None:
        idle_after = model.config.idle_unload_after_s or 0.0
        try:
            idle_s = round(time.monotonic() - model.usage.last_active)
            async with self._ops.operation(IDLE_UNLOAD, model, {"idle_s": idle_s}):
                # A switch to it, or a request, may have come while this waited its turn.
                if model.state is not State.RUNNING or self._serving(model.name):
                    return
                if time.monotonic() - model.usage.last_active < idle_after:
                    return
                reason = f"idle for {idle_s}s (idle_unload_after_s={idle_after:g})"
                if self.may_park(model):
                    # A backend that will not sleep is stopped by park itself.
                    action = "parked" if await self.park(model, reason) else "stopped"
                else:
                    await self._backends.stop_model(model, reason)
                    action = "stopped"
                self._registry.events.publish(IdleUnloaded(model=model.name, action=action))
        except ModeldError:
            pass  # logged by the operation; the monitor tries again at its next pass
        finally:
            model.unloading(None)
