"""restart = "on-failure": a model that ran and died is started again later, with
backoff, as the pure policy in core/restart_policy.py decides. It follows transitions: nothing
calls it when a model fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from modeld.core.restart_policy import GiveUp, decide_restart
from modeld.core.states import State
from modeld.engine.lifecycle import Transition
from modeld.engine.record import ModelRecord

log = structlog.get_logger("modeld.engine.restarts")

# The transitions to `failed` of a backend that was serving: the ones worth a restart.
DIED = frozenset({"backend exited", "engine died"})


class Restarts:
    """Schedules and runs automatic restarts; an operator's own action cancels them."""

    def __init__(self, bring_back: Callable[[ModelRecord], Awaitable[bool]]) -> None:
        # Starts the model again (under the operations lock); False if it failed.
        self._bring_back = bring_back

    def on_transition(self, event: Transition) -> None:
        """A model that ran has died: schedule its restart, if its policy says so."""
        if event.new is State.FAILED and event.reason in DIED:
            self.schedule(event.record)

    def schedule(self, record: ModelRecord) -> None:
        """Start it again later, or give up, as decide_restart says."""
        ran_for = time.monotonic() - (record.running_since or time.monotonic())
        decision = decide_restart(record.config, record.restarts.attempts, ran_for)
        if decision is None:
            return
        if isinstance(decision, GiveUp):
            record.restarts.attempts = decision.attempts
            record.restarts.gave_up = True
            record.restarts.at = None
            log.warning("restart.gave_up", model=record.name, attempts=decision.attempts)
            return
        record.restarts.attempts = decision.attempt
        record.restarts.at = time.time() + decision.delay_s
        log.info(
            "restart.scheduled",
            model=record.name,
            attempt=decision.attempt,
            delay_s=decision.delay_s,
        )
        record.restarts.task = asyncio.create_task(
            self._restart(record, decision.delay_s), name=f"restart-{record.name}"
        )

    async def _restart(self, record: ModelRecord, delay: float) -> None:
        await asyncio.sleep(delay)
        record.restarts.task = None
        record.restarts.at = None
        if not await self._bring_back(record):
            # A failed retry is one more failure; the policy decides whether to go on.
            record.running_since = None
            self.schedule(record)

    @staticmethod
    def cancel(record: ModelRecord) -> None:
        """An operator acting on the model takes over from the restart policy."""
        if record.restarts.task is not None:
            record.restarts.task.cancel()
            record.restarts.task = None
        record.restarts.attempts = 0
        record.restarts.at = None
        record.restarts.gave_up = False
