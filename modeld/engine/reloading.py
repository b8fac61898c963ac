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
from modeld.engine.backends import Backends
from modeld.engine.learning import Learning
from modeld.engine.operations import Asker, Operations
from modeld.wire.events import ConfigReloaded
from modeld.wire.results import ReloadResult

log = structlog.get_logger("modeld.engine.reloading")


NO_BACKEND = frozenset({State.STOPPED, State.FAILED})


class Reloader:
    """Applies a new config file to a running engine; an invalid one changes nothing."""

    def __init__(
        self, path: Path | None, backends: Backends, operations: Operations, learning: Learning
    ) -> None:
        self._path = path
        self._backends = backends
        self._registry = backends.registry
        self._ops = operations
        self._learning = learning

    async def reload(self, caller: Asker | None = None) -> ReloadResult:
        """Re-read the config file and apply it; what changed."""
        if self._path is None:
            raise ConfigError("modeld was started without a config file: nothing to reload")
        new = await asyncio.to_thread(load_config, self._path)
        async with self._ops.operation("reload", None, caller):
            # No backend runs for a stopped or a failed model: its changes apply now (a
            # failed one was once told "changed while running").
            idle = {n for n, r in self._registry.models.items() if r.state in NO_BACKEND}
            plan = plan_reload(self._registry.config, new, idle)
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
            self._registry.events.publish(
                ConfigReloaded(added=outcome.added, removed=outcome.removed)
            )
            return outcome

    def _apply(self, plan: ReloadPlan) -> None:
        """The plan, applied to the registry and to each Model through its intents."""
        registry = self._registry
        registry.replace(plan.config, plan.added, plan.removed)
        for name, settings in plan.config.models.items():
            model = registry.models[name]
            model.managed(True)
            if name in plan.changed_now:
                model.reconfigured(settings)
                self._learning.config_changed(model)
            elif name in plan.changed_at_next_start:
                model.reconfigure_later(settings)
        for name in plan.unmanaged:
            registry.models[name].managed(False)

    def _check_runnable(self, plan: ReloadPlan) -> None:
        """Refuse a config whose models need a runtime or a GPU this daemon does not have."""
        for name, model in plan.config.models.items():
            if model.runtime not in self._backends.runtimes:
                raise ConfigError(
                    f"models.{name}.runtime: the {model.runtime} runtime is not running in "
                    "this daemon; restart modeld to add it",
                    fields=[f"models.{name}.runtime"],
                )
        if reading := self._backends.ledger.reading:
            check_devices(plan.config.models, {d.index for d in reading.devices})
            check_fits(plan.config.models, {d.index: d.total_gb for d in reading.devices})
