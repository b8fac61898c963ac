"""Observations: the one door through which what the monitor saw (monitor.py) reaches
model state. Each is applied only if the model has not changed since it was made."""

from __future__ import annotations

import time

import structlog

from modeld.adapters.gpu.base import GpuReading
from modeld.adapters.hfcache import Download
from modeld.adapters.runtime.base import BackendStatus, Runtime
from modeld.adapters.vllm import Health
from modeld.core.activity import Activity
from modeld.core.errors import ProbeFailed
from modeld.core.states import State
from modeld.engine.backends import Backends
from modeld.engine.leases import Leases
from modeld.engine.model import Model
from modeld.engine.parking import Parking
from modeld.wire.events import DeviceMemory, GpuMemory

log = structlog.get_logger("modeld.engine.observations")


# A device's use must move this much to be published again (one poll apart at most).
MEMORY_STEP_GB = 0.1


class Observations:
    """Applies what the monitor saw to the Models."""

    def __init__(self, backends: Backends, parking: Parking, leases: Leases) -> None:
        self._backends = backends
        self._registry = backends.registry
        self._parking = parking
        self._leases = leases
        # Each device's use when it was last published (gpu.memory).
        self._published: dict[int, float] = {}

    def models(self) -> list[Model]:
        """Every Model with a backend of its own (the monitor reads them and never
        writes); adapters follow their bases (loras.py)."""
        return [m for m in self._registry.models.values() if not m.config.base]

    def runtime_for(self, model: Model) -> Runtime:
        """The runtime a model's backend runs in."""
        return self._backends.runtime(model)

    async def inspect(self, model: Model) -> BackendStatus:
        """What its runtime says of its backend (whether the runtime answered is noted)."""
        return await self._backends.inspect(model)

    def seen_not_answering(self, model: Model, generation: int, refused: ProbeFailed) -> None:
        """Its probe got no token though /health answers 200: `failed`, with why (the
        restart policy takes it from there)."""
        model.stopped_answering(generation, str(refused.data.get("reason", refused.message)))

    def seen_memory(self, reading: GpuReading) -> None:
        """A fresh GPU reading (learning had it from the ledger): say when a device's use
        has moved (`gpu.memory`: memory freed by a driver some time after a stop changes
        no state, and the page and `watch` would show the old figure)."""
        used = {d.index: round(d.used_gb, 1) for d in reading.devices}
        moved = any(
            abs(gb - self._published.get(index, -MEMORY_STEP_GB)) >= MEMORY_STEP_GB
            for index, gb in used.items()
        )
        if moved:
            self._published = used
            devices = [
                DeviceMemory(
                    index=d.index, used_gb=round(d.used_gb, 1), free_gb=round(d.free_gb, 1)
                )
                for d in reading.devices
            ]
            self._registry.events.publish(GpuMemory(devices=devices))

    def seen_exit(
        self, model: Model, generation: int, exit_code: int | None, lines: list[str]
    ) -> None:
        """A running or parked model's backend is gone: any exit modeld did not ask for is
        a failure."""
        model.observed_exit(generation, exit_code, lines)

    def seen_health(self, model: Model, generation: int, health: Health) -> None:
        """What /health said; 503 means vLLM's engine died."""
        model.observed_health(generation, health)

    def seen_asleep(self, model: Model, generation: int, asleep: bool) -> None:
        """A model parked or woken behind modeld's back."""
        if not model.is_current(generation):
            return
        if asleep:
            self._leases.end_hold(model.name)  # a parked backend serves nothing
            model.parked("found asleep")
        elif model.state is State.SLEEPING:
            self._backends.begin_loading(model, "found awake")

    def seen_running(self, model: Model, generation: int, backend: BackendStatus) -> None:
        """A stopped or failed model's backend runs: watch it to health."""
        if model.is_current(generation) and model.state in (State.STOPPED, State.FAILED):
            self._backends.begin_loading(model, "backend found running", backend)

    def seen_activity(self, model: Model, generation: int, activity: Activity | None) -> None:
        """A running model's request metrics: its rates; idle unload decides; a backend
        found running at startup that serves nothing needs no hold (unreadable metrics
        keep it)."""
        if model.is_current(generation):
            model.seen_activity(activity, time.monotonic())
        self._parking.seen_activity(model, generation)
        idle = activity is not None and not activity.in_flight
        if idle and model.is_current(generation) and self._leases.holding(model.name):
            log.info("lease.hold_ended", model=model.name, reason="nothing in flight")
            self._leases.end_hold(model.name)

    def seen_download(self, name: str, download: Download | None) -> None:
        """What the HF cache holds for a model."""
        if model := self._registry.models.get(name):
            model.observed_download(download)
