"""What is known of a model (`Known`, the read side of a Model): its state, backend and
load, and its facts grouped by concern in immutable records that only the Model's
intents replace; and the Revision that tells `status` something it shows has changed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from modeld.adapters.gpu.base import GpuReading
from modeld.adapters.hfcache import Download
from modeld.adapters.runtime.base import BackendStatus
from modeld.adapters.vllm import Health
from modeld.core.activity import Activity, Rates
from modeld.core.config import ModelConfig
from modeld.core.errors import ModeldError
from modeld.core.memory import Need, Source, model_need, parked_residual
from modeld.core.restart_policy import Deaths
from modeld.core.states import ModelStatus, State

WAKE_FRACTION_OF_LOAD = 0.1

LoadTask = asyncio.Task[ModeldError | None]


class Revision:
    """The one signal that what `status` shows has changed: bumped by every intent and by
    every other change the view shows."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        """Something `status` shows has changed."""
        self.value += 1


class Died(StrEnum):
    """How a model that was serving died (the failures worth an automatic restart); the
    value is the transition's reason."""

    EXITED = "backend exited"
    ENGINE_DIED = "engine died"
    # /health answered 200, but its probe got no token (probes.py).
    NOT_ANSWERING = "engine not answering"


@dataclass(frozen=True)
class LoadFacts:
    """The load in progress and how long loads take: when this one began, the last one
    modeld timed, and the typical one learned here."""

    started: float | None = None
    last_s: float | None = None
    learned_s: float | None = None


@dataclass(frozen=True)
class MemoryFacts:
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


@dataclass(frozen=True)
class RestartFacts:
    """restart = "on-failure": consecutive automatic restarts, and the pending one."""

    attempts: int = 0
    at: float | None = None
    gave_up: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Deaths in a row during requests (the sizes in flight at each), and whether that
    # made it a crash loop held failed until an operator acts (core/restart_policy.py).
    deaths: Deaths = ()
    held: bool = False


@dataclass(frozen=True)
class SleepFacts:
    """Sleep mode: the last and typical wake times, and why the last wake fell back to a
    cold start."""

    last_wake_s: float | None = None
    learned_wake_s: float | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class UsageFacts:
    """Who wants it: when it was last asked for and its decaying demand (cost_aware); the
    last /metrics reading and the rates since the one before, when it was last seen busy
    (monotonic), and an idle unload in progress; leases held on it, acquires queued."""

    last_used: float = 0.0
    demand: float = 0.0
    activity: Activity | None = None
    rates: Rates | None = None
    last_active: float = 0.0
    unload_task: asyncio.Task[None] | None = field(default=None, repr=False)
    leases: int = 0
    waiting: int = 0
    # Token probes (probes.py): when the last one answered, and what; how many were
    # sent, and how many of them the last /metrics reading had seen (a probe is a
    # finished request there, and must not count as activity).
    probed_at: float = 0.0
    probe_answer: str | None = None
    probes: int = 0
    probes_seen: int = 0
    # When its requests last moved (a token generated, a request finished) or none was
    # in flight: the stall probe's clock.
    progress_at: float = 0.0


class Known:
    """What is known of one model, read by every part of the engine; only its Model's
    intents (model.py) change it."""

    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._status = ModelStatus(State.STOPPED, time.time())
        # Bumped by every transition: an observation made before it is stale.
        self._generation = 0
        self._health = Health.UNKNOWN
        self._backend: BackendStatus | None = None
        self._load_task: LoadTask | None = None
        self._running_since: float | None = None
        self._download: Download | None = None
        self._loading = LoadFacts()
        self._memory = MemoryFacts()
        self._restarts = RestartFacts()
        self._sleep = SleepFacts()
        self._usage = UsageFacts()
        # After a reload: removed from the config while running, or changed while running.
        self._unmanaged = False
        self._pending_config: ModelConfig | None = None

    # ---- what it is (read by everyone) ----------------------------------------------------

    @property
    def name(self) -> str:
        """The model's name."""
        return self._config.name

    @property
    def config(self) -> ModelConfig:
        """The settings it runs (or will start) with."""
        return self._config

    @property
    def pending_config(self) -> ModelConfig | None:
        """Settings a reload changed while it ran: applied at its next start."""
        return self._pending_config

    @property
    def status(self) -> ModelStatus:
        """State, since when, and the failure if it failed."""
        return self._status

    @property
    def state(self) -> State:
        """The model's current state."""
        return self._status.state

    @property
    def generation(self) -> int:
        """How many transitions it has made: an observation carries the one it saw."""
        return self._generation

    @property
    def health(self) -> Health:
        """What /health last said."""
        return self._health

    @property
    def backend(self) -> BackendStatus | None:
        """The container or process modeld knows it by."""
        return self._backend

    @property
    def load_task(self) -> LoadTask | None:
        """The load or wake in flight: its outcome is None or the error."""
        return self._load_task

    @property
    def running_since(self) -> float | None:
        """Monotonic time it last began to answer."""
        return self._running_since

    @property
    def download(self) -> Download | None:
        """What the HF cache holds of its weights."""
        return self._download

    @property
    def loading(self) -> LoadFacts:
        """Load times."""
        return self._loading

    @property
    def memory(self) -> MemoryFacts:
        """Memory beyond the config."""
        return self._memory

    @property
    def restarts(self) -> RestartFacts:
        """The restart policy's bookkeeping."""
        return self._restarts

    @property
    def sleep(self) -> SleepFacts:
        """Sleep-mode times."""
        return self._sleep

    @property
    def usage(self) -> UsageFacts:
        """Demand, activity, leases."""
        return self._usage

    @property
    def unmanaged(self) -> bool:
        """Removed from the config by a reload while it ran: forgotten once stopped."""
        return self._unmanaged

    def is_current(self, generation: int) -> bool:
        """Nothing has changed since an observation made at `generation`."""
        return self._generation == generation

    # ---- derived figures ------------------------------------------------------------------

    def load_estimate_s(self) -> float:
        """Seconds a cold load is expected to take: learned here, else configured."""
        return self._loading.learned_s or self._config.load_time_seconds

    def wake_estimate(self) -> tuple[float, str]:
        """Seconds a wake from sleep is expected to take, and where the figure comes from:
        learned here, configured, else a tenth of the load estimate (vLLM's published
        wakes take 0.3-6 s against 30-100+ s cold starts)."""
        if self._sleep.learned_wake_s:
            return self._sleep.learned_wake_s, "learned"
        if self._config.wake_time_seconds:
            return self._config.wake_time_seconds, "configured"
        return WAKE_FRACTION_OF_LOAD * self.load_estimate_s(), "estimated"

    def need(self, totals: Mapping[int, float]) -> Need:
        """What it needs per device: its learned peak first, then its configuration."""
        return model_need(self._config, totals, self._memory.learned_gb)

    def held(self, reading: GpuReading | None) -> tuple[dict[int, float], Source]:
        """What it holds now: measured from its processes where the driver says, else
        its need (or, parked, its residual)."""
        measured = reading.per_model.get(self.name, {}) if reading else {}
        if measured:
            return dict(measured), Source.MEASURED
        need = self.need(device_totals(reading))
        if self.state is State.SLEEPING:
            residual = parked_residual(self._config, need, self._memory.residual_gb)
            return residual, Source.LEARNED if self._memory.residual_gb else Source.ESTIMATED
        return dict(need.per_device), need.source

    def residual(self, reading: GpuReading | None) -> dict[int, float]:
        """What it would keep per device once parked."""
        need = self.need(device_totals(reading))
        return parked_residual(self._config, need, self._memory.residual_gb)


def device_totals(reading: GpuReading | None) -> dict[int, float]:
    """Total GB per device index from a reading (empty before the first one)."""
    return {d.index: d.total_gb for d in reading.devices} if reading else {}
