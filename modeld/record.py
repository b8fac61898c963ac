"""What the Supervisor keeps about each model (it alone writes these records)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from modeld.activity import Activity
from modeld.config import ModelConfig
from modeld.errors import ModeldError
from modeld.hfcache import Download
from modeld.runtime.base import BackendStatus
from modeld.states import ModelStatus, State
from modeld.vllm import Health

WAKE_FRACTION_OF_LOAD = 0.1


class Revision:
    """The one signal that what `status` shows has changed: bumped by every write to a
    record and by every other change the view shows."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        """Something `status` shows has changed."""
        self.value += 1


@dataclass
class ModelRecord:
    """One model's live record: state, health, backend, and its load watcher."""

    config: ModelConfig
    status: ModelStatus
    # Bumped by every transition: an observation made before it is stale.
    generation: int = 0
    health: Health = Health.UNKNOWN
    backend: BackendStatus | None = None
    load: asyncio.Task[ModeldError | None] | None = field(default=None, repr=False)
    loading_started: float | None = None
    last_used: float = 0.0
    demand: float = 0.0
    last_load_s: float | None = None
    learned_load_s: float | None = None
    # Peak memory measured on this host under the current settings (preferred by plans),
    # and how far the measured use went past the configured figure, if it did.
    learned_gb: dict[int, float] | None = None
    # Memory a just-stopped backend held that the driver may not have released yet, the
    # memory no model held before it stopped, and until when to expect the release.
    releasing_gb: dict[int, float] | None = None
    releasing_base: dict[int, float] = field(default_factory=dict)
    releasing_until: float = 0.0
    over_plan_gb: float | None = None
    download: Download | None = None
    running_since: float | None = None
    # restart = "on-failure": consecutive automatic restarts, and the pending one.
    restart_attempts: int = 0
    restart_at: float | None = None
    restart_gave_up: bool = False
    restart_task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Sleep mode: what it kept per device the last time it was parked (measured), the
    # last and typical wake times, and why the last wake fell back to a cold start.
    residual_gb: dict[int, float] | None = None
    last_wake_s: float | None = None
    learned_wake_s: float | None = None
    wake_fallback: str | None = None
    # idle_unload_after_s: the last /metrics reading, when it was last seen busy
    # (monotonic), and the unload in progress.
    activity: Activity | None = None
    last_active: float = 0.0
    unload_task: asyncio.Task[None] | None = field(default=None, repr=False)
    # After a reload: removed from the config while running, or changed while running.
    unmanaged: bool = False
    pending_config: ModelConfig | None = None
    # Told of every write to this record (the status view's one signal).
    changes: Revision | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        changes = self.__dict__.get("changes")
        if changes is not None:
            changes.bump()

    def load_estimate_s(self) -> float:
        """Seconds a cold load is expected to take: learned here, else configured."""
        return self.learned_load_s or self.config.load_time_seconds

    def wake_estimate(self) -> tuple[float, str]:
        """Seconds a wake from sleep is expected to take, and where the figure comes from:
        learned here, configured, else a tenth of the load estimate (vLLM's published
        wakes take 0.3-6 s against 30-100+ s cold starts)."""
        if self.learned_wake_s:
            return self.learned_wake_s, "learned"
        if self.config.wake_time_seconds:
            return self.config.wake_time_seconds, "configured"
        return WAKE_FRACTION_OF_LOAD * self.load_estimate_s(), "estimated"

    @property
    def name(self) -> str:
        """The model's name."""
        return self.config.name

    @property
    def state(self) -> State:
        """The model's current state."""
        return self.status.state
