"""The GPU as the Engine sees it: the last reading, its freshness, and the memory
arithmetic its decisions need. The ledger reads; it never changes a model's state."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import structlog

from modeld.adapters.gpu.base import BackendRef, GpuMonitor, GpuReading
from modeld.core.config import Config
from modeld.core.errors import GpuUnavailable, OperationTimeout
from modeld.core.memory import Need, model_need
from modeld.core.planner import Candidate, Device, Infeasible, Plan, Target, plan_switch
from modeld.core.states import State
from modeld.engine.facts import device_totals
from modeld.engine.gpu_health import GpuHealth
from modeld.engine.model import Model

log = structlog.get_logger("modeld.engine.ledger")

# Models whose backends hold GPU memory a plan may take back.
HOLDERS = frozenset({State.RUNNING, State.LOADING, State.SLEEPING})


class GpuLedger:
    """Reads the GPU monitor, keeps the last good reading, and plans memory."""

    def __init__(
        self,
        monitor: GpuMonitor,
        config: Callable[[], Config],
        host_ram: Callable[[], float | None] | None = None,
    ) -> None:
        self._monitor = monitor
        # The config in force, as the registry holds it (a reload replaces it there).
        self._config = config
        # Host RAM a park may still take (None: unknown, or simulated as with the
        # simulated GPU, whose fake backends move no weights).
        self._host_ram = host_ram
        self.reading: GpuReading | None = None
        self._read_at = 0.0
        self.error: str | None = None
        self._listeners: list[Callable[[GpuReading], None]] = []
        # Each device's health, from every fresh reading.
        self.health = GpuHealth()

    def on_reading(self, listener: Callable[[GpuReading], None]) -> None:
        """Call `listener` with each fresh reading (what learns the models' peaks)."""
        self._listeners.append(listener)

    async def read(self, models: Iterable[Model]) -> GpuReading:
        """A fresh reading; a recent one (marked stale) if the driver fails; else GpuUnavailable."""
        try:
            reading = await self._monitor.read(self._backend_refs(models))
        except GpuUnavailable as exc:
            self.error = exc.message
            age = time.monotonic() - self._read_at
            if self.reading is not None and age <= self._config().gpu.stale_after_s:
                log.warning("gpu.stale_reading", error=exc.message, age_s=round(age, 2))
                return self.reading
            raise
        self.reading = reading
        self._read_at = time.monotonic()
        self.error = None
        self.health.seen(reading)
        for listener in self._listeners:
            listener(reading)
        return reading

    @property
    def backend(self) -> str:
        """The GPU monitor's kind (nvml, simulated)."""
        return self._monitor.backend

    def free_gb(self) -> dict[str, float]:
        """Free GB per device in the last reading (for logs)."""
        devices = self.reading.devices if self.reading else ()
        return {str(d.index): round(d.free_gb, 2) for d in devices}

    def need(self, model: Model) -> Need:
        """What `model` needs per device on this host's devices."""
        return model.need(device_totals(self.reading))

    def _backend_refs(self, models: Iterable[Model]) -> list[BackendRef]:
        totals = device_totals(self.reading) or dict(enumerate(self._config().gpu.devices_gb))
        return [
            BackendRef(
                model=r.name,
                pid=r.backend.pid,
                container_id=r.backend.id,
                expected_gb=model_need(r.config, totals).per_device,
                parked=r.state is State.SLEEPING,
            )
            for r in models
            if r.backend is not None and r.backend.pid
        ]

    def plan_inputs(
        self,
        target: Model,
        models: Iterable[Model],
        reading: GpuReading,
        protected: Callable[[str], bool] = lambda _: False,
    ) -> tuple[Target, list[Device], list[Candidate]]:
        """Plain data for the planner: free memory net of loads still growing; who holds what,
        and who may be parked."""
        totals = device_totals(reading)
        pending: dict[int, float] = defaultdict(float)
        candidates = []
        parking = self._config().daemon.park_ram_gb > 0
        everyone = list(models)
        carried: dict[str, list[Model]] = defaultdict(list)
        for model in everyone:
            if model.config.base:
                carried[model.config.base].append(model)
        for model in everyone:
            # An adapter holds nothing of its own: its base is the candidate.
            if model is target or model.state not in HOLDERS or model.config.base:
                continue
            adapters = carried.get(model.name, [])
            held, _ = model.held(reading)
            if model.state is State.LOADING:
                # A loading vLLM has not yet reserved all it will: count the rest as taken.
                for device, gb in model.need(totals).per_device.items():
                    pending[device] += max(0.0, gb - held.get(device, 0.0))
                    held[device] = max(gb, held.get(device, 0.0))
            candidates.append(
                Candidate(
                    model.name,
                    held,
                    model.config.size_gb,
                    # A base is worth what it and its adapters are asked for.
                    max([model.usage.last_used, *(a.usage.last_used for a in adapters)]),
                    # A loading model has callers waiting on it, a leased one requests in
                    # flight: neither is evicted under them.
                    model.config.pinned or model.state is State.LOADING or protected(model.name),
                    reload_s=model.load_estimate_s(),
                    demand=model.usage.demand + sum(a.usage.demand for a in adapters),
                    # vLLM has corrupted adapters after a wake: a base with adapters is
                    # stopped, never parked (docs/adapters.md).
                    can_park=(
                        parking
                        and model.config.sleep_mode
                        and not adapters
                        and model.state is State.RUNNING
                    ),
                    parked=model.state is State.SLEEPING,
                    residual_gb=model.residual(reading),
                    park_ram_gb=model.config.parked_ram_gb,
                    wake_s=model.wake_estimate()[0],
                )
            )
        devices = [
            Device(d.index, d.total_gb, d.free_gb - pending[d.index]) for d in reading.devices
        ]
        target_need = dict(target.need(totals).per_device)
        if target.state is State.SLEEPING:
            # Waking needs only what its residual does not already hold.
            held, _ = target.held(reading)
            target_need = {d: max(0.0, gb - held.get(d, 0.0)) for d, gb in target_need.items()}
        return Target(target.name, target_need), devices, candidates

    def ram_free_gb(self, models: Iterable[Model]) -> float:
        """Host RAM a park may take: what is left of park_ram_gb after the parked models,
        and never more than the host has to spare."""
        budget = self._config().daemon.park_ram_gb - self.ram_parked_gb(models)
        spare = self._host_ram() if self._host_ram is not None else None
        return budget if spare is None else min(budget, spare)

    @staticmethod
    def ram_parked_gb(models: Iterable[Model]) -> float:
        """Host RAM the weights of parked models take."""
        return sum(r.config.parked_ram_gb for r in models if r.state is State.SLEEPING)

    def plan(
        self,
        target: Model,
        models: Iterable[Model],
        reading: GpuReading,
        protected: Callable[[str], bool] = lambda _: False,
    ) -> Plan | Infeasible:
        """Who to stop so `target` fits, under the configured eviction policy.

        Memory that backends stopped a moment ago still hold, but that the driver is about
        to release, counts as free here (so the plan stops no one for it); the start
        itself still waits until the driver shows it free (wait_for_room).
        """
        everyone = list(models)
        need, devices, candidates = self.plan_inputs(target, everyone, reading, protected)
        releasing = self.releasing(everyone, reading)
        devices = [
            Device(d.index, d.total_gb, d.free_gb + releasing.get(d.index, 0.0)) for d in devices
        ]
        return plan_switch(
            need,
            devices,
            candidates,
            self._config().daemon.eviction_policy,
            max(0.0, self.ram_free_gb(everyone)),
        )

    def releasing(self, models: Iterable[Model], reading: GpuReading) -> dict[int, float]:
        """Per device, memory that stopped backends held and the driver has not yet freed:
        what no model holds now beyond what no model held before they stopped, at most
        what they held. Known only where the driver reports per-process use."""
        if not reading.per_process:
            return {}
        now = time.monotonic()
        unattributed = self.unattributed(reading)
        credit: dict[int, float] = defaultdict(float)
        for model in models:
            if model.memory.releasing_gb is None or now > model.memory.releasing_until:
                continue
            for device, gb in model.memory.releasing_gb.items():
                lingering = unattributed.get(device, 0.0) - model.memory.releasing_base.get(
                    device, 0.0
                )
                credit[device] += max(0.0, min(gb, lingering))
        return dict(credit)

    @staticmethod
    def unattributed(reading: GpuReading) -> dict[int, float]:
        """Per device, memory held by no model's live processes."""
        return {
            d.index: d.used_gb - sum(m.get(d.index, 0.0) for m in reading.per_model.values())
            for d in reading.devices
        }

    def held_outside(self, devices: Iterable[int]) -> str:
        """What processes modeld does not manage hold on `devices`, in words ("GPU 0:
        12.3 GB held by pid 4242, not managed by modeld"); empty when none (or unknown:
        the driver does not list processes)."""
        wanted = set(devices)
        found = [
            f"GPU {p.device}: {p.used_gb:.1f} GB held by pid {p.pid}, not managed by modeld"
            for p in (self.reading.processes if self.reading else ())
            if p.model is None and p.device in wanted
        ]
        return "; ".join(found)

    async def wait_for_room(self, target: Model, models: Iterable[Model]) -> None:
        """Poll the GPU until `target` fits without stopping anything, or time out."""
        daemon = self._config().daemon
        everyone = list(models)
        deadline = time.monotonic() + daemon.memory_release_timeout_s
        while True:
            need, devices, _ = self.plan_inputs(target, everyone, await self.read(everyone))
            free = {d.index: d.free_gb for d in devices}
            short = {
                str(dev): round(gb - free.get(dev, 0.0), 2)
                for dev, gb in need.need_gb.items()
                if free.get(dev, 0.0) + 1e-6 < gb
            }
            if not short:
                return
            if time.monotonic() >= deadline:
                outside = self.held_outside(int(device) for device in short)
                raise OperationTimeout(
                    f"GPU memory for {target.name} was not released within "
                    f"{daemon.memory_release_timeout_s}s" + (f" ({outside})" if outside else ""),
                    model=target.name,
                    short_gb=short,
                )
            await asyncio.sleep(daemon.memory_poll_interval_s)

    async def close(self) -> None:
        """Release the driver."""
        await self._monitor.close()
