"""History: what modeld did to each model and why (every state change with its reason,
every switch's plan with its figures), the latest HISTORY_KEPT of them, kept with the
learned state so a restart does not forget why a model was evicted an hour ago."""

from __future__ import annotations

import time

from modeld.adapters.store import HISTORY_KEPT
from modeld.core.planner import Plan
from modeld.core.states import State
from modeld.engine.learning import Learning
from modeld.engine.model import Transition
from modeld.wire.history import HistoryEntry


class History:
    """Appends decisions to the learned state and saves it (in the background)."""

    def __init__(self, learning: Learning) -> None:
        self._learning = learning

    def _add(self, entry: HistoryEntry) -> None:
        kept = self._learning.learned.history
        kept.append(entry)
        del kept[:-HISTORY_KEPT]
        self._learning.save()

    def on_transition(self, event: Transition) -> None:
        """A state change and its reason (`stopping` is left out: the `stopped` that
        follows carries the same reason)."""
        if event.new is State.STOPPING:
            return
        self._add(
            HistoryEntry(
                at=time.time(),
                model=event.model.name,
                from_state=event.old.value,
                to_state=event.new.value,
                reason=event.reason,
                failure=event.failure.reason if event.failure else None,
                seconds=event.load_s if event.load_s is not None else event.wake_s,
            )
        )

    def planned(self, model: str, plan: Plan, policy: str) -> None:
        """A switch's plan, as it was carried out: who went, the memory it counted."""
        moves = [f"stop {', '.join(plan.stop)}"] if plan.stop else []
        moves += [f"park {', '.join(plan.park)}"] if plan.park else []
        self._add(
            HistoryEntry(
                at=time.time(),
                model=model,
                kind="plan",
                reason=(
                    f"{'; '.join(moves) or 'fits as is'}: needs {plan.required_gb:.1f} GB on "
                    f"GPU {plan.device}, {plan.available_before_gb:.1f} GB free ({policy})"
                ),
                stop=list(plan.stop),
                park=list(plan.park),
                required_gb=round(plan.required_gb, 1),
                available_before_gb=round(plan.available_before_gb, 1),
                policy=policy,
            )
        )

    def entries(self, model: str | None = None, limit: int = 50) -> list[HistoryEntry]:
        """The latest `limit` entries (oldest first), of one model or of all."""
        kept = self._learning.learned.history
        chosen = [e for e in kept if model is None or e.model == model]
        return chosen[-limit:]
