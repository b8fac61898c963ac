"""The Engine: the one thing the daemon calls. Built from a config and what it talks to
(`Engine(config, gpu=, runtimes=)`), with startup and shutdown; callers use its
sub-facades:

- engine.models   switch, start, stop, restart, preload, logs   (facades.py)
- engine.leases   acquire, release                              (facades.py)
- engine.view     status, gpu, models, the systemd line         (view.py)
- engine.events   subscribe, and the next transition  (facades.py; wire/events.py)
- engine.reload   the config file again                         (reloading.py)

Below them, each part owns one concern: registry.py (the Models and the config in
force), backends.py (their backends' start, stop and load watch), operations.py (the
lock), switching.py and room.py (a switch), parking.py (sleep mode),
restarts.py, learning.py, observations.py (the monitor's one door).
They hear of each other's work as listeners, not by being handed each other:
- a transition reaches learning (load and wake times; settings changed with it), the
  history, the metrics, the restart policy and the adapters' loads (an adapter follows
  its base, loras.py), as listeners of the registry, which also logs and publishes it
  (registry.py);
- an event (wire/events.py) reaches the history (a switch's plan) and the metrics (each
  model a switch stopped or parked, a wake that failed), as listeners of the bus;
- a fresh GPU reading reaches learning (the models' peaks), as a listener of the ledger.
What is not an event is told directly by the part that has it: a switch's outcome, a
busy refusal and a lease's wait to the metrics (facades.py), a parked model's residual
to learning (parking.py), settings a reload changed at once to learning (reloading.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from modeld.adapters.gpu.base import GpuMonitor
from modeld.adapters.runtime.base import BackendState, Runtime
from modeld.adapters.store import Store
from modeld.adapters.vllm import VllmClient
from modeld.core.config import Config
from modeld.core.config_checks import check_devices, check_fits
from modeld.core.errors import ModeldError, RuntimeUnavailable
from modeld.core.gpu_health import DeviceHealth
from modeld.core.states import State
from modeld.engine.backends import Backends
from modeld.engine.facades import Events, LeaseOps, ModelOps
from modeld.engine.history import History
from modeld.engine.learning import Learning
from modeld.engine.leases import Leases
from modeld.engine.ledger import GpuLedger
from modeld.engine.metrics import MetricsSink, NoMetrics
from modeld.engine.model import Model, Transition
from modeld.engine.monitor import Monitor
from modeld.engine.observations import Observations
from modeld.engine.operations import Asker, Operations
from modeld.engine.parking import Parking
from modeld.engine.registry import Registry
from modeld.engine.reloading import Reloader
from modeld.engine.restarts import Restarts
from modeld.engine.room import Room
from modeld.engine.switching import Switcher
from modeld.engine.view import StatusView
from modeld.wire.events import Event, GpuHealthChanged, SwitchParked, SwitchStopped, WakeFailed
from modeld.wire.results import ReloadResult

log = structlog.get_logger("modeld.engine.engine")


class Engine:
    """Every model's state (through its parts), and the operations on it."""

    def __init__(
        self,
        config: Config,
        *,
        gpu: GpuMonitor,
        runtimes: Mapping[str, Runtime],
        vllm: VllmClient | None = None,
        store: Store | None = None,
        config_path: Path | None = None,
        metrics: MetricsSink | None = None,
        host_ram: Callable[[], float | None] | None = None,
    ) -> None:
        self._metrics = metrics or NoMetrics()
        registry = Registry(config)
        ledger = GpuLedger(gpu, lambda: registry.config, host_ram)
        learning = Learning(
            store or Store(config.daemon.state_dir), lambda: list(registry.models.values())
        )
        ledger.on_reading(learning.memory)
        history = History(learning)
        backends = Backends(registry, dict(runtimes), vllm or VllmClient(), ledger)
        bus = registry.events
        ops = Operations(registry)
        leases = Leases(registry.models)
        parking = Parking(backends, ops, learning, leases.busy)
        switcher = Switcher(backends, ops, Room(backends, ops, parking, leases), leases)
        # A death is seen up to a poll after the requests it cut ended at the gateway.
        restarts = Restarts(
            switcher.bring_back,
            lambda model: leases.serving(model, registry.config.daemon.poll_interval_s + 1.0),
        )
        listeners = (
            learning.on_transition,
            history.on_transition,
            self._count,
            restarts.on_transition,
            backends.loras.on_transition,
        )
        for listener in listeners:
            registry.on_transition(listener)
        bus.listen(history.on_event)
        bus.listen(self._count_event)
        ledger.health.on_change(self._health_changed)
        self._registry, self._backends, self._ops = registry, backends, ops
        self._learning, self._leases = learning, leases
        self.models = ModelOps(backends, switcher, history, self._metrics)
        self.leases = LeaseOps(registry, self.models, leases, self._metrics)
        self.view = StatusView(backends, lambda: ops.busy, lambda: bus.count)
        self.events = Events(registry)
        self._reloader = Reloader(config_path, backends, ops, learning)
        observations = Observations(backends, parking, leases)
        self._monitor = Monitor(observations, ledger, backends.vllm, lambda: registry.config.daemon)
        self._monitoring: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Read the GPU, check every model's devices exist and that each could fit alone
        (ConfigError naming the model and its numbers), find what already runs."""
        reading = await self._backends.ledger.read(self._registry.models.values())
        check_devices(self._registry.config.models, {d.index for d in reading.devices})
        check_fits(self._registry.config.models, {d.index: d.total_gb for d in reading.devices})
        await self._learning.load()
        for model in self._registry.models.values():
            if not model.config.base:  # an adapter is found in its base once it runs
                await self._find_running(model)
        await self.poll_once()
        self._monitoring = asyncio.create_task(self._monitor.run(), name="modeld-monitor")

    async def _find_running(self, model: Model) -> None:
        try:
            backend = await self._backends.inspect(model)
        except RuntimeUnavailable:
            return
        except ModeldError as exc:
            log.warning("startup.not_adopted", model=model.name, reason=exc.message)
            return
        if backend.state is BackendState.RUNNING:
            # Found running: watch it to health instead of restarting it.
            self._backends.begin_loading(model, "found running at startup", backend)
            if grace := self._registry.config.daemon.adopt_grace_s:
                # It may be streaming answers whose leases ended with the last daemon.
                self._leases.hold(model, grace)

    def closing(self) -> None:
        """The daemon is stopping: callers waiting on a load are answered now (the load
        itself goes on until shutdown), so none holds the daemon's exit."""
        self._backends.closing.set()

    async def shutdown(self) -> None:
        """Stop watching; models in containers keep running, process children are stopped."""
        self.closing()
        models = list(self._registry.models.values())
        pending: list[asyncio.Task[Any] | None] = [self._monitoring]
        pending += [
            task for r in models for task in (r.load_task, r.restarts.task, r.usage.unload_task)
        ]
        tasks = [t for t in pending if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._leases.close()
        await self._backends.loras.close()
        await self._learning.close()
        for runtime in self._backends.runtimes.values():
            await runtime.close()
        await self._backends.ledger.close()
        await self._backends.vllm.close()

    async def poll_once(self) -> None:
        """One monitor pass now: GPU, each model's backend and health, downloads."""
        await self._monitor.poll_once()

    async def reload(self, *, caller: Asker | None = None) -> ReloadResult:
        """Re-read the config file and apply it; an invalid one changes nothing."""
        return await self._reloader.reload(caller)

    async def reset_gpu_health(self, device: int, *, caller: Asker | None = None) -> None:
        """An operator checked (or reset) a device: its health is `ok` again; audited
        like an operation."""
        async with self._ops.operation("gpu_reset_health", None, caller):
            self._backends.ledger.health.reset(device)

    def _health_changed(self, device: int, before: DeviceHealth, after: DeviceHealth) -> None:
        """A device's health moved: `status` shows it, and the event says it."""
        self._registry.revision.bump()
        on = sorted(
            m.name
            for m in self._registry.models.values()
            if device in m.config.gpus and m.backend is not None and not m.config.base
        )
        self._registry.events.publish(
            GpuHealthChanged(
                device=device,
                from_health=before.state.value,
                to_health=after.state.value,
                reasons=list(after.reasons),
                models=on,
            )
        )

    def _count(self, event: Transition) -> None:
        """Metrics follow transitions."""
        name = event.model.name
        if event.new is State.FAILED:
            self._metrics.failed(name)
        if event.old is State.RUNNING and event.new is State.SLEEPING:
            self._metrics.parked(name)
        if event.load_s is not None:
            self._metrics.load_done(name, event.load_s)
        if event.wake_s is not None:
            self._metrics.woke(name, event.wake_s)

    def _count_event(self, event: Event) -> None:
        """Metrics follow a switch's steps: each model it stopped or parked, and a wake
        that failed."""
        match event:
            case SwitchStopped(stopped=name) | SwitchParked(parked=name):
                self._metrics.evicted(name)
            case WakeFailed(model=name):
                self._metrics.woke(name, None)
