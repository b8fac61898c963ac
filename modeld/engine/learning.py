"""Learning: what modeld measures on this host and keeps across restarts (load and wake
times, peak and parked memory), kept current by transitions and GPU readings and saved
in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from modeld.adapters.gpu.base import GpuReading
from modeld.adapters.store import (
    Learned,
    Store,
    learned_peak,
    learned_residual,
    remember_load,
    remember_peak,
    remember_residual,
    remember_wake,
)
from modeld.core.memory import model_need
from modeld.core.states import State
from modeld.engine.model import Model, Transition

log = structlog.get_logger("modeld.engine.learning")

# Measured use beyond the configured need by more than this is reported.
OVER_PLAN_TOLERANCE_GB = 0.5


class Learning:
    """Owns the learned figures: loads them at start, updates the Models, saves changes."""

    def __init__(self, store: Store, models: Callable[[], Iterable[Model]]) -> None:
        self._store = store
        self._models = models
        self.learned = Learned()
        self._saving: asyncio.Task[None] | None = None
        self._dirty = False

    async def load(self) -> None:
        """Read the state file (off the loop) and give each Model its figures."""
        self.learned = await asyncio.to_thread(self._store.load)
        for model in self._models():
            if learned := self.learned.models.get(model.name):
                model.learned_times(
                    load_s=learned.typical_load_s(), wake_s=learned.typical_wake_s()
                )
                model.learned_peak(learned_peak(learned, model.config))
                model.measured_residual(learned_residual(learned, model.config))

    def on_transition(self, event: Transition) -> None:
        """Settings changed with it: the learned peak follows them. A load or wake modeld
        timed has ended: remember how long it took."""
        model = event.model
        if event.config_changed:
            self.config_changed(model)
        if event.load_s is not None:
            remember_load(self.learned, model.name, event.load_s)
            model.learned_times(load_s=self.learned.models[model.name].typical_load_s())
            self.save()
        if event.wake_s is not None:
            remember_wake(self.learned, model.name, event.wake_s)
            model.learned_times(wake_s=self.learned.models[model.name].typical_wake_s())
            self.save()

    def config_changed(self, model: Model) -> None:
        """Its settings changed: only a peak learned under the new ones counts."""
        model.learned_peak(learned_peak(self.learned.models.get(model.name), model.config))

    def parked(self, model: Model, measured: dict[int, float]) -> None:
        """What a model kept on the GPU once parked, as measured."""
        model.measured_residual(dict(measured))
        remember_residual(self.learned, model.config, dict(measured))
        self.save()

    def memory(self, reading: GpuReading) -> None:
        """Remember each running model's peak measured memory; report one that has grown
        past what its configuration promised (the plan was built on that figure)."""
        totals = {d.index: d.total_gb for d in reading.devices}
        grew = False
        for model in self._models():
            measured = reading.per_model.get(model.name)
            if model.state is not State.RUNNING or not measured:
                continue
            if not all(gpu in measured for gpu in model.config.gpus):
                continue
            if remember_peak(self.learned, model.config, dict(measured)):
                grew = True
                self.config_changed(model)
            planned = model_need(model.config, totals)
            over = sum(measured.values()) - planned.total_gb
            if over > OVER_PLAN_TOLERANCE_GB and model.memory.over_plan_gb is None:
                model.went_over_plan(round(over, 2))
                log.warning(
                    "memory.over_plan",
                    model=model.name,
                    planned_gb=planned.total_gb,
                    planned_source=planned.source.value,
                    measured_gb=round(sum(measured.values()), 2),
                )
        if grew:
            self.save()

    def save(self) -> None:
        """Write the learned figures (and the history) in the background: a waiting caller
        need not wait for an fsync. A burst of changes is one or two writes: the writer
        takes a fresh snapshot as long as something changed since its last one."""
        self._dirty = True
        if self._saving is None or self._saving.done():
            self._saving = asyncio.create_task(self._write_while_dirty(), name="save-learned")

    async def _write_while_dirty(self) -> None:
        while self._dirty:
            self._dirty = False
            snapshot = self.learned.model_copy(deep=True)
            await asyncio.to_thread(self._store.save, snapshot)

    async def close(self) -> None:
        """Let the last save finish: learned figures are not lost at exit."""
        if self._saving is not None:
            await asyncio.wait({self._saving})
