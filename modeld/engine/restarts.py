"""restart = "on-failure": a model that ran and died is started again later, with
backoff, as the pure policy in core/restart_policy.py decides; a model that keeps dying
during requests is held failed instead (a crash loop: a retried prompt that kills its
engine must not restart it for every retry). It follows transitions: nothing calls it
when a model fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from modeld.core.restart_policy import GiveUp, crash_loop_reason, crash_streak, decide_restart
from modeld.engine.model import Model, Transition

log = structlog.get_logger("modeld.engine.restarts")


class Restarts:
    """Schedules and runs automatic restarts (an operator's own operation takes over:
    Model.restarts_taken_over)."""

    def __init__(
        self,
        bring_back: Callable[[Model], Awaitable[bool]],
        serving: Callable[[Model], tuple[int | None, ...]],
    ) -> None:
        # Starts the model again (under the operations lock); False if it failed.
        self._bring_back = bring_back
        # The sizes of the requests a model was serving (Leases.serving).
        self._serving = serving

    def on_transition(self, event: Transition) -> None:
        """A model that ran has died: hold it if that makes a crash loop, else schedule
        its restart, if its policy says so."""
        if event.died is None:
            return
        model = event.model
        ran_for = time.monotonic() - (model.running_since or time.monotonic())
        serving = self._serving(model)
        deaths, held = crash_streak(model.restarts.deaths, serving, ran_for, model.config)
        reason = crash_loop_reason(deaths) if held else ""
        model.died_serving(deaths, held, reason)
        if held:
            model.restarts_given_up(model.restarts.attempts)
            log.warning("restart.crash_loop", model=model.name, deaths=len(deaths))
            return
        self.schedule(model)

    def schedule(self, model: Model) -> None:
        """Start it again later, or give up, as decide_restart says."""
        ran_for = time.monotonic() - (model.running_since or time.monotonic())
        decision = decide_restart(model.config, model.restarts.attempts, ran_for)
        if decision is None:
            return
        if isinstance(decision, GiveUp):
            model.restarts_given_up(decision.attempts)
            log.warning("restart.gave_up", model=model.name, attempts=decision.attempts)
            return
        log.info(
            "restart.scheduled",
            model=model.name,
            attempt=decision.attempt,
            delay_s=decision.delay_s,
        )
        task = asyncio.create_task(
            self._restart(model, decision.delay_s), name=f"restart-{model.name}"
        )
        model.restart_scheduled(decision.attempt, time.time() + decision.delay_s, task)

    async def _restart(self, model: Model, delay: float) -> None:
        await asyncio.sleep(delay)
        model.restart_due()
        if not await self._bring_back(model):
            # A failed retry is one more failure; the policy decides whether to go on.
            model.restart_failed()
            self.schedule(model)
