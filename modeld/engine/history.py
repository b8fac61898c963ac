"""History: what modeld did to each model and why (every state change with its reason,
every switch's plan with its figures), the latest HISTORY_KEPT of them, kept with the
learned state so a restart does not forget why a model was evicted an hour ago."""

from __future__ import annotations

import time

from modeld.adapters.store import HISTORY_KEPT
from modeld.core.states import State
from modeld.engine.learning import Learning
from modeld.engine.model import Transition
from modeld.wire.events import Event, SwitchPlanned
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

    def on_event(self, event: Event) -> None:
        """A switch's plan, as it is carried out: who goes, the memory it counted."""
        if not isinstance(event, SwitchPlanned):
            return
        memory = event.memory_info
        required, available = memory.required_gb or 0.0, memory.available_before_gb or 0.0
        moves = [f"stop {', '.join(event.stop)}"] if event.stop else []
        moves += [f"park {', '.join(event.park)}"] if event.park else []
        self._add(
            HistoryEntry(
                at=time.time(),
                model=event.model,
                kind="plan",
                reason=(
                    f"{'; '.join(moves) or 'fits as is'}: needs {required:.1f} GB on "
                    f"GPU {memory.device}, {available:.1f} GB free ({event.policy})"
                ),
                stop=list(event.stop),
                park=list(event.park),
                required_gb=required,
                available_before_gb=available,
                policy=event.policy,
            )
        )

    def entries(self, model: str | None = None, limit: int = 50) -> list[HistoryEntry]:
        """The latest `limit` entries (oldest first), of one model or of all."""
        kept = self._learning.learned.history
        chosen = [e for e in kept if model is None or e.model == model]
        return chosen[-limit:]
