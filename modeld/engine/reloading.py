"""Reloading the config: read the file, compare (core/reload.py, pure), check the new
config can run here, and apply the comparison to the registry, under the lock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from modeld.core.config import load_config
from modeld.core.config_checks import check_devices, check_fits
from modeld.core.errors import ConfigError
from modeld.core.reload import ReloadPlan, plan_reload
from modeld.core.states import State
from modeld.engine.learning import Learning
from modeld.engine.lifecycle import Lifecycle
from modeld.engine.operations import Asker, Operations
from modeld.wire.events import ConfigReloaded
from modeld.wire.results import ReloadResult

log = structlog.get_logger("modeld.engine.reloading")


NO_BACKEND = frozenset({State.STOPPED, State.FAILED})


class Reloader:
    """Applies a new config file to a running engine; an invalid one changes nothing."""

    def __init__(
        self, path: Path | None, lifecycle: Lifecycle, operations: Operations, learning: Learning
    ) -> None:
        self._path = path
        self._life = lifecycle
        self._ops = operations
        self._learning = learning

    async def reload(self, caller: Asker | None = None) -> ReloadResult:
        """Re-read the config file and apply it; what changed."""
        if self._path is None:
            raise ConfigError("modeld was started without a config file: nothing to reload")
        new = await asyncio.to_thread(load_config, self._path)
        life = self._life
        async with self._ops.operation("reload", None, caller):
            # No backend runs for a stopped or a failed model: its changes apply now (a
            # failed one was once told "changed while running").
            idle = {n for n, r in life.records.items() if r.state in NO_BACKEND}
            plan = plan_reload(life.config, new, idle)
            self._check_runnable(plan)
            self._apply(plan)
            outcome = ReloadResult(
                status="reloaded",
                added=list(plan.added),
                removed=list(plan.removed),
                unmanaged=list(plan.unmanaged),
                changed=list(plan.changed_now),
                changed_at_next_start=list(plan.changed_at_next_start),
                requires_restart=list(plan.requires_restart),
            )
            log.info("config.reloaded", path=str(self._path), **outcome.answer())
            # Routers (the gateway) learn the model names from this.
            life.events.publish(ConfigReloaded(added=outcome.added, removed=outcome.removed))
            return outcome

    def _apply(self, plan: ReloadPlan) -> None:
        """The plan, applied to the registry and to each Model through its intents."""
        life = self._life
        for name in plan.added:
            life.records[name] = life.new_model(name, plan.config)
        for name in plan.removed:
            del life.records[name]
        for name, model in plan.config.models.items():
            record = life.records[name]
            record.managed(True)
            if name in plan.changed_now:
                record.reconfigured(model)
                self._learning.config_changed(record)
            elif name in plan.changed_at_next_start:
                record.reconfigure_later(model)
        for name in plan.unmanaged:
            life.records[name].managed(False)
        life.config = plan.config
        life.revision.bump()

    def _check_runnable(self, plan: ReloadPlan) -> None:
        """Refuse a config whose models need a runtime or a GPU this daemon does not have."""
        for name, model in plan.config.models.items():
            if model.runtime not in self._life.runtimes:
                raise ConfigError(
                    f"models.{name}.runtime: the {model.runtime} runtime is not running in "
                    "this daemon; restart modeld to add it",
                    fields=[f"models.{name}.runtime"],
                )
        if reading := self._life.ledger.reading:
            check_devices(plan.config.models, {d.index for d in reading.devices})
            check_fits(plan.config.models, {d.index: d.total_gb for d in reading.devices})
