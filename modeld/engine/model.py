"""The Model: the one owner of a model's state, backend, load task and facts.

Nothing else assigns them. The engine's parts read a Model and call its intents
(`begin_start`, `became_running`, `parked`, `observed_exit`, ...); each intent checks the
transition table (core/states.py), stamps the change, bumps the Revision `status` is
cached on, and announces a typed `Transition` to the registry's listeners (events,
metrics, learning, the restart policy). Intents are synchronous: what one does is
applied atomically on the event loop. Observations carry the generation they were made
at and are dropped when the model has moved on since.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from modeld.adapters.gpu.base import GpuReading
from modeld.adapters.hfcache import Download
from modeld.adapters.runtime.base import BackendStatus
from modeld.adapters.vllm import Health
from modeld.core.activity import Activity
from modeld.core.config import ModelConfig
from modeld.core.errors import ModeldError
from modeld.core.memory import Need, Source, model_need, parked_residual
from modeld.core.states import Failure, ModelStatus, State, check_transition

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


class Died:
    """Why a model that was serving failed: the reasons worth an automatic restart."""

    EXITED = "backend exited"
    ENGINE_DIED = "engine died"
    ALL = frozenset({EXITED, ENGINE_DIED})


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


@dataclass(frozen=True)
class SleepFacts:
    """Sleep mode: the last and typical wake times, and why the last wake fell back to a
    cold start."""

    last_wake_s: float | None = None
    learned_wake_s: float | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class UsageFacts:
    """Who wants it: when it was last asked for and its decaying demand (cost_aware);
    idle_unload_after_s: the last /metrics reading, when it was last seen busy
    (monotonic), and the unload in progress; leases held on it, acquires queued for it."""

    last_used: float = 0.0
    demand: float = 0.0
    activity: Activity | None = None
    last_active: float = 0.0
    unload_task: asyncio.Task[None] | None = field(default=None, repr=False)
    leases: int = 0
    waiting: int = 0


@dataclass(frozen=True)
class Transition:
    """A model's state changed: from, to, why; how long the load or wake took when this
    is the end of one modeld started and timed."""

    model: Model
    old: State
    new: State
    reason: str
    failure: Failure | None = None
    load_s: float | None = None
    wake_s: float | None = None


Announce = Callable[[Transition], None]


class Model:
    """One configured model, owning its state; changed only through its intents."""

    def __init__(self, config: ModelConfig, revision: Revision, announce: Announce) -> None:
        self._config = config
        self._revision = revision
        self._announce = announce
        self._status = ModelStatus(State.STOPPED, time.time())
        # Bumped by every transition: an observation made before it is stale.
        self._generation = 0
        self._health = Health.UNKNOWN
        self._backend: BackendStatus | None = None
        self._load: LoadTask | None = None
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
    def load(self) -> LoadTask | None:
        """The load or wake in flight: its outcome is None or the error."""
        return self._load

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

    # ---- intents: its life ----------------------------------------------------------------

    def begin_start(self) -> bool:
        """modeld starts its backend: `loading`, fresh health and memory notes; settings a
        reload left pending apply now. True if its settings changed."""
        changed = self._apply_pending()
        self._memory = replace(self._memory, over_plan_gb=None, releasing_gb=None)
        self._health = Health.UNKNOWN
        self._move(State.LOADING, "start")
        self._loading = replace(self._loading, started=time.monotonic())
        return changed

    def begin_watch(self, reason: str, backend: BackendStatus | None = None) -> None:
        """A backend modeld did not start (found running, or awake again) is watched to
        health: `loading`."""
        if backend is not None:
            self._backend = backend
        self._move(State.LOADING, reason)
        self._loading = replace(self._loading, started=time.monotonic())

    def begin_wake(self) -> None:
        """Waking it from sleep: `loading` until the wake ends."""
        self._move(State.LOADING, "wake")
        self._loading = replace(self._loading, started=time.monotonic())

    def started(self, backend: BackendStatus) -> None:
        """The runtime started its backend."""
        self._backend = backend
        self._changed()

    def watching(self, load: LoadTask | None) -> None:
        """The task whose outcome is this load's (None: no load is in flight any more)."""
        self._load = load
        self._changed()

    def saw_health(self, health: Health) -> None:
        """What /health said while loading or waking."""
        if health is not self._health:
            self._health = health
            self._changed()

    def became_running(self, reason: str, load_s: float | None = None) -> None:
        """It answers health: `running` (`load_s`: a load modeld started and timed)."""
        self._load = None
        if load_s is not None:
            self._loading = replace(self._loading, last_s=load_s)
        self._running_since = time.monotonic()
        self._move(State.RUNNING, reason, load_s=load_s)

    def woke(self, wake_s: float) -> None:
        """Woken from sleep and answering: `running`."""
        self._load = None
        self._sleep = replace(self._sleep, fallback=None, last_wake_s=wake_s)
        self._running_since = time.monotonic()
        self._move(State.RUNNING, "woke", wake_s=wake_s)

    def wake_fell_back(self, why: str) -> None:
        """It would not wake: a cold start follows, and `status` says why."""
        self._sleep = replace(self._sleep, fallback=why)
        self._changed()

    def found_asleep(self) -> None:
        """Watched to health and found asleep (parked behind modeld's back)."""
        self._load = None
        self._move(State.SLEEPING, "found asleep")

    def parked(self, reason: str) -> None:
        """Its backend sleeps (weights in host RAM): `sleeping`."""
        if self.state is State.RUNNING:  # the monitor may have seen it asleep already
            self._move(State.SLEEPING, reason)

    def failed(self, reason: str, failure: Failure) -> None:
        """A load, start or stop failed: `failed`, with why."""
        self._load = None
        self._move(State.FAILED, reason, failure)

    def stopping(
        self, reason: str, releasing: tuple[dict[int, float], dict[int, float], float] | None
    ) -> None:
        """Its backend is being stopped: `stopping`; `releasing` is what it held, what no
        model held then, and until when the driver may take to free it."""
        self._move(State.STOPPING, reason)
        if releasing is not None:
            held, base, until = releasing
            self._memory = replace(
                self._memory, releasing_gb=held, releasing_base=base, releasing_until=until
            )

    def stopped(self, reason: str) -> bool:
        """Its backend is gone: `stopped`; settings a reload left pending apply now. True
        if its settings changed."""
        self._health = Health.UNKNOWN
        self._backend = None
        self._move(State.STOPPED, reason)
        return self._apply_pending()

    # ---- intents: what the monitor saw ----------------------------------------------------

    def observed_exit(self, generation: int, exit_code: int | None, lines: list[str]) -> None:
        """Its running or parked backend is gone without modeld asking: `failed`."""
        if not self.is_current(generation):
            return
        self._backend = None
        self._health = Health.UNKNOWN
        why = f"backend exited with code {exit_code} without modeld asking"
        self._move(State.FAILED, Died.EXITED, Failure(why, exit_code, tuple(lines)))

    def observed_health(self, generation: int, health: Health) -> None:
        """What /health said; 503 means vLLM's engine died: `failed`."""
        if not self.is_current(generation):
            return
        self.saw_health(health)
        if health is Health.DEAD:
            self._move(
                State.FAILED, Died.ENGINE_DIED, Failure("/health answered 503: the engine died")
            )

    def observed_download(self, download: Download | None) -> None:
        """What the HF cache holds of its weights."""
        if download != self._download:
            self._download = download
            self._changed()

    # ---- intents: what was learned --------------------------------------------------------

    def learned_times(self, *, load_s: float | None = None, wake_s: float | None = None) -> None:
        """A new typical load or wake time."""
        if load_s is not None:
            self._loading = replace(self._loading, learned_s=load_s)
        if wake_s is not None:
            self._sleep = replace(self._sleep, learned_wake_s=wake_s)
        self._changed()

    def learned_peak(self, peak_gb: dict[int, float] | None) -> None:
        """The peak learned under its current settings (None: none yet)."""
        self._memory = replace(self._memory, learned_gb=peak_gb)
        self._changed()

    def measured_residual(self, residual_gb: dict[int, float] | None) -> None:
        """What it keeps on the GPU once parked, as measured (or learned earlier)."""
        self._memory = replace(self._memory, residual_gb=residual_gb)
        self._changed()

    def went_over_plan(self, over_gb: float) -> None:
        """Measured use went past the configured figure by `over_gb`."""
        self._memory = replace(self._memory, over_plan_gb=over_gb)
        self._changed()

    # ---- intents: restarts -----------------------------------------------------------------

    def restart_scheduled(self, attempt: int, at: float, task: asyncio.Task[None]) -> None:
        """An automatic restart will run at `at` (wall clock)."""
        self._restarts = RestartFacts(attempt, at, False, task)
        self._changed()

    def restart_due(self) -> None:
        """The pending automatic restart runs now."""
        self._restarts = replace(self._restarts, task=None, at=None)
        self._changed()

    def restart_failed(self) -> None:
        """An automatic restart did not bring it back: it never ran since."""
        self._running_since = None
        self._changed()

    def restarts_given_up(self, attempts: int) -> None:
        """The policy gave up after `attempts`."""
        self._restarts = RestartFacts(attempts, None, True, None)
        self._changed()

    def restarts_taken_over(self) -> None:
        """An operator acts on it: the pending restart is cancelled and the count reset."""
        if self._restarts.task is not None:
            self._restarts.task.cancel()
        if self._restarts != RestartFacts():
            self._restarts = RestartFacts()
            self._changed()

    # ---- intents: usage --------------------------------------------------------------------

    def asked_for(self) -> None:
        """A request for it: lru's clock moves and cost_aware's demand counts it."""
        self._usage = replace(self._usage, last_used=time.time(), demand=self._usage.demand + 1.0)
        self._changed()

    def demand_decayed(self, factor: float) -> None:
        """Every request for any model decays everyone's demand."""
        self._usage = replace(self._usage, demand=self._usage.demand * factor)

    def touched(self) -> None:
        """Switched to while running: its idle clock starts again."""
        self._usage = replace(self._usage, last_active=time.monotonic())
        self._changed()

    def seen_activity(self, activity: Activity | None, last_active: float) -> None:
        """Its request metrics, and when it was last seen busy."""
        self._usage = replace(self._usage, activity=activity, last_active=last_active)
        self._changed()

    def unloading(self, task: asyncio.Task[None] | None) -> None:
        """The idle unload in flight (None: it ended)."""
        self._usage = replace(self._usage, unload_task=task)
        self._changed()

    def leased(self, delta: int) -> None:
        """A lease on it was granted (+1) or ended (-1)."""
        self._usage = replace(self._usage, leases=self._usage.leases + delta)
        self._changed()

    def queued(self, delta: int) -> None:
        """An acquire for it began (+1) or ended (-1)."""
        self._usage = replace(self._usage, waiting=self._usage.waiting + delta)
        self._changed()

    # ---- intents: its settings --------------------------------------------------------------

    def reconfigured(self, config: ModelConfig) -> None:
        """A reload changed its settings while nothing runs: they apply now."""
        self._config, self._pending_config = config, None
        self._changed()

    def reconfigure_later(self, config: ModelConfig) -> None:
        """A reload changed its settings while it runs: they apply at its next start."""
        self._pending_config = config
        self._changed()

    def managed(self, managed: bool) -> None:
        """In the config (True), or removed by a reload while it runs (False)."""
        if self._unmanaged == managed:
            self._unmanaged = not managed
            self._changed()

    # ---- the one transition ---------------------------------------------------------------

    def _move(
        self,
        new: State,
        reason: str,
        failure: Failure | None = None,
        *,
        load_s: float | None = None,
        wake_s: float | None = None,
    ) -> None:
        """The one place its state changes: check the table, stamp, announce."""
        old = self.state
        check_transition(old, new)
        self._status = ModelStatus(new, time.time(), failure)
        self._generation += 1
        if new is State.RUNNING:
            # The idle clock starts when it answers; activity is read afresh from here.
            self._usage = replace(self._usage, last_active=time.monotonic(), activity=None)
        self._changed()
        self._announce(Transition(self, old, new, reason, failure, load_s, wake_s))

    def _apply_pending(self) -> bool:
        if self._pending_config is None:
            return False
        self._config, self._pending_config = self._pending_config, None
        return True

    def _changed(self) -> None:
        self._revision.bump()


def device_totals(reading: GpuReading | None) -> dict[int, float]:
    """Total GB per device index from a reading (empty before the first one)."""
    return {d.index: d.total_gb for d in reading.devices} if reading else {}
