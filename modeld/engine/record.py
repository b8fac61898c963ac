"""What the engine keeps about each model. The engine's parts write these records
(lifecycle, switching, parking, restarts, learning, observations, the Supervisor);
one owner per model, changing them only through intents, is issue 22's next step."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from modeld.adapters.hfcache import Download
from modeld.adapters.runtime.base import BackendStatus
from modeld.adapters.vllm import Health
from modeld.core.activity import Activity
from modeld.core.config import ModelConfig
from modeld.core.errors import ModeldError
from modeld.core.states import ModelStatus, State

WAKE_FRACTION_OF_LOAD = 0.1


class Revision:
    """The one signal that what `status` shows has changed: bumped by every write to a
    record and by every other change the view shows."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        """Something `status` shows has changed."""
        self.value += 1


class _Facts:
    """A group of a record's fields: every write tells the record's Revision."""

    _changes: Revision | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if self._changes is not None:
            self._changes.bump()


@dataclass
class LoadFacts(_Facts):
    """The load in progress and how long loads take: when this one began, the last one
    modeld timed, and the typical one learned here."""

    started: float | None = None
    last_s: float | None = None
    learned_s: float | None = None


@dataclass
class MemoryFacts(_Facts):
    """GPU memory beyond the config: the peak learned here under the current settings
    (preferred by plans); what a just-stopped backend may still hold, what no model held
    before it stopped, and until when to expect the release; how far measured use went
    past the configured figure; what it kept when last parked (measured)."""

    learned_gb: dict[int, float] | None = None
    releasing_gb: dict[int, float] | None = None
    releasing_base: dict[int, float] = field(default_factory=dict)
    releasing_until: float = 0.0
    over_plan_gb: float | None = None
    residual_gb: dict[int, float] | None = None


@dataclass
class RestartFacts(_Facts):
    """restart = "on-failure": consecutive automatic restarts, and the pending one."""

    attempts: int = 0
    at: float | None = None
    gave_up: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass
class SleepFacts(_Facts):
    """Sleep mode: the last and typical wake times, and why the last wake fell back to a
    cold start."""

    last_wake_s: float | None = None
    learned_wake_s: float | None = None
    fallback: str | None = None


@dataclass
class UsageFacts(_Facts):
    """Who wants it: when it was last asked for and its decaying demand (cost_aware);
    idle_unload_after_s: the last /metrics reading, when it was last seen busy
    (monotonic), and the unload in progress; the leases held on it."""

    last_used: float = 0.0
    demand: float = 0.0
    activity: Activity | None = None
    last_active: float = 0.0
    unload_task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Requests in flight on it (leases.py), and acquires waiting for it to run.
    leases: int = 0
    waiting: int = 0


@dataclass
class ModelRecord:
    """One model's live record: state, health, backend and its load watcher; the rest
    grouped by concern (loading, memory, restarts, sleep, usage)."""

    config: ModelConfig
    status: ModelStatus
    # Bumped by every transition: an observation made before it is stale.
    generation: int = 0
    health: Health = Health.UNKNOWN
    backend: BackendStatus | None = None
    load: asyncio.Task[ModeldError | None] | None = field(default=None, repr=False)
    running_since: float | None = None
    download: Download | None = None
    loading: LoadFacts = field(default_factory=LoadFacts)
    memory: MemoryFacts = field(default_factory=MemoryFacts)
    restarts: RestartFacts = field(default_factory=RestartFacts)
    sleep: SleepFacts = field(default_factory=SleepFacts)
    usage: UsageFacts = field(default_factory=UsageFacts)
    # After a reload: removed from the config while running, or changed while running.
    unmanaged: bool = False
    pending_config: ModelConfig | None = None
    # Told of every write to this record (the status view's one signal).
    changes: Revision | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for facts in (self.loading, self.memory, self.restarts, self.sleep, self.usage):
            object.__setattr__(facts, "_changes", self.changes)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        changes = self.__dict__.get("changes")
        if changes is not None:
            changes.bump()

    def load_estimate_s(self) -> float:
        """Seconds a cold load is expected to take: learned here, else configured."""
        return self.loading.learned_s or self.config.load_time_seconds

    def wake_estimate(self) -> tuple[float, str]:
        """Seconds a wake from sleep is expected to take, and where the figure comes from:
        learned here, configured, else a tenth of the load estimate (vLLM's published
        wakes take 0.3-6 s against 30-100+ s cold starts)."""
        if self.sleep.learned_wake_s:
            return self.sleep.learned_wake_s, "learned"
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
