"""Observations: the one door through which what the monitor saw (monitor.py) reaches
model state. Each is applied only if the record has not changed since it was made."""

from __future__ import annotations

import time

import structlog

from modeld.adapters.gpu.base import GpuReading
from modeld.adapters.hfcache import Download
from modeld.adapters.runtime.base import BackendStatus, Runtime
from modeld.adapters.vllm import Health
from modeld.core.activity import Activity
from modeld.core.states import State
from modeld.engine.leases import Leases
from modeld.engine.lifecycle import Lifecycle
from modeld.engine.model import Model
from modeld.engine.parking import Parking
from modeld.wire.events import DeviceMemory, GpuMemory

log = structlog.get_logger("modeld.engine.observations")


# A device's use must move this much to be published again (one poll apart at most).
MEMORY_STEP_GB = 0.1


class Observations:
    """Applies what the monitor saw to the Models."""

    def __init__(self, lifecycle: Lifecycle, parking: Parking, leases: Leases) -> None:
        self._life = lifecycle
        self._parking = parking
        self._leases = leases
        # Each device's use when it was last published (gpu.memory).
        self._published: dict[int, float] = {}

    def records(self) -> list[Model]:
        """Every model's record (the monitor reads them and never writes)."""
        return list(self._life.records.values())

    def runtime_for(self, record: Model) -> Runtime:
        """The runtime a model's backend runs in."""
        return self._life.runtime(record)

    async def inspect(self, record: Model) -> BackendStatus:
        """What its runtime says of its backend (whether the runtime answered is noted)."""
        return await self._life.inspect(record)

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
            self._life.events.publish(GpuMemory(devices=devices))

    def seen_exit(
        self, record: Model, generation: int, exit_code: int | None, lines: list[str]
    ) -> None:
        """A running or parked model's backend is gone: any exit modeld did not ask for is
        a failure."""
        record.observed_exit(generation, exit_code, lines)

    def seen_health(self, record: Model, generation: int, health: Health) -> None:
        """What /health said; 503 means vLLM's engine died."""
        record.observed_health(generation, health)

    def seen_asleep(self, record: Model, generation: int, asleep: bool) -> None:
        """A model parked or woken behind modeld's back."""
        if not record.is_current(generation):
            return
        if asleep:
            self._leases.end_hold(record.name)  # a parked backend serves nothing
            record.parked("found asleep")
        elif record.state is State.SLEEPING:
            self._life.begin_loading(record, "found awake")

    def seen_running(self, record: Model, generation: int, backend: BackendStatus) -> None:
        """A stopped or failed model's backend runs: watch it to health."""
        if record.is_current(generation) and record.state in (State.STOPPED, State.FAILED):
            self._life.begin_loading(record, "backend found running", backend)

    def seen_activity(self, record: Model, generation: int, activity: Activity | None) -> None:
        """A running model's request metrics: its rates; idle unload decides; a backend
        found running at startup that serves nothing needs no hold (unreadable metrics
        keep it)."""
        if record.is_current(generation):
            record.seen_activity(activity, time.monotonic())
        self._parking.seen_activity(record, generation)
        idle = activity is not None and not activity.in_flight
        if idle and record.is_current(generation) and self._leases.holding(record.name):
            log.info("lease.hold_ended", model=record.name, reason="nothing in flight")
            self._leases.end_hold(record.name)

    def seen_download(self, name: str, download: Download | None) -> None:
        """What the HF cache holds for a model."""
        if record := self._life.records.get(name):
            record.observed_download(download)
