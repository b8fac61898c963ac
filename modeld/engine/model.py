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
from collections.abc import Callable
from dataclasses import dataclass, replace

from modeld.adapters.hfcache import Download
from modeld.adapters.runtime.base import BackendStatus
from modeld.adapters.vllm import Health
from modeld.core.activity import Activity, last_active, progressed, rates
from modeld.core.config import ModelConfig
from modeld.core.restart_policy import Deaths
from modeld.core.states import Failure, ModelStatus, State, check_transition
from modeld.engine.facts import (
    Died,
    Known,
    LoadTask,
    RestartFacts,
    Revision,
)


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
    # Set when a serving model died (the restart policy's cue).
    died: Died | None = None
    # Settings a reload left pending applied with this change (learning's cue: only a
    # peak learned under the new settings counts).
    config_changed: bool = False


Announce = Callable[[Transition], None]


class Model(Known):
    """One configured model, owning its state; changed only through its intents."""

    def __init__(self, config: ModelConfig, revision: Revision, announce: Announce) -> None:
        super().__init__(config)
        self._revision = revision
        self._announce = announce

    # ---- intents: its life ----------------------------------------------------------------

    def begin_start(self) -> None:
        """modeld starts its backend: `loading`, fresh health and memory notes; settings a
        reload left pending apply now (the transition says so)."""
        changed = self._apply_pending()
        self._memory = replace(self._memory, over_plan_gb=None, releasing_gb=None)
        self._health = Health.UNKNOWN
        self._move(State.LOADING, "start", config_changed=changed)
        self._loading = replace(self._loading, started=time.monotonic())

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
        self._load_task = load
        self._changed()

    def saw_health(self, health: Health) -> None:
        """What /health said while loading or waking."""
        if health is not self._health:
            self._health = health
            self._changed()

    def became_running(self, reason: str, load_s: float | None = None) -> None:
        """It answers health: `running` (`load_s`: a load modeld started and timed)."""
        self._load_task = None
        if load_s is not None:
            self._loading = replace(self._loading, last_s=load_s)
        self._running_since = time.monotonic()
        self._move(State.RUNNING, reason, load_s=load_s)

    def woke(self, wake_s: float) -> None:
        """Woken from sleep and answering: `running`."""
        self._load_task = None
        self._sleep = replace(self._sleep, fallback=None, last_wake_s=wake_s)
        self._running_since = time.monotonic()
        self._move(State.RUNNING, "woke", wake_s=wake_s)

    def wake_fell_back(self, why: str) -> None:
        """It would not wake: a cold start follows, and `status` says why."""
        self._sleep = replace(self._sleep, fallback=why)
        self._changed()

    def found_asleep(self) -> None:
        """Watched to health and found asleep (parked behind modeld's back)."""
        self._load_task = None
        self._move(State.SLEEPING, "found asleep")

    def parked(self, reason: str) -> None:
        """Its backend sleeps (weights in host RAM): `sleeping`."""
        if self.state is State.RUNNING:  # the monitor may have seen it asleep already
            self._move(State.SLEEPING, reason)

    def failed(self, reason: str, failure: Failure) -> None:
        """A load, start or stop failed: `failed`, with why."""
        self._load_task = None
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

    def stopped(self, reason: str) -> None:
        """Its backend is gone: `stopped`; settings a reload left pending apply now (the
        transition says so)."""
        self._health = Health.UNKNOWN
        self._backend = None
        changed = self._apply_pending()
        self._move(State.STOPPED, reason, config_changed=changed)

    # ---- intents: what the monitor saw ----------------------------------------------------

    def observed_exit(self, generation: int, exit_code: int | None, lines: list[str]) -> None:
        """Its running or parked backend is gone without modeld asking: `failed`."""
        if not self.is_current(generation):
            return
        self._backend = None
        self._health = Health.UNKNOWN
        why = f"backend exited with code {exit_code} without modeld asking"
        failure = Failure(why, exit_code, tuple(lines))
        self._move(State.FAILED, Died.EXITED.value, failure, died=Died.EXITED)

    def observed_health(self, generation: int, health: Health) -> None:
        """What /health said; 503 means vLLM's engine died: `failed`."""
        if not self.is_current(generation):
            return
        self.saw_health(health)
        if health is Health.DEAD:
            self._move(
                State.FAILED,
                Died.ENGINE_DIED.value,
                Failure("/health answered 503: the engine died"),
                died=Died.ENGINE_DIED,
            )

    def stopped_answering(self, generation: int, why: str) -> None:
        """/health says 200 but its probe got no token: `failed` (the restart policy
        applies, as for an engine that died)."""
        if not self.is_current(generation) or self.state is not State.RUNNING:
            return
        self._move(State.FAILED, Died.NOT_ANSWERING.value, Failure(why), died=Died.NOT_ANSWERING)

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
        self._restarts = replace(self._restarts, attempts=attempt, at=at, gave_up=False, task=task)
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
        self._restarts = replace(
            self._restarts, attempts=attempts, at=None, gave_up=True, task=None
        )
        self._changed()

    def restarts_taken_over(self) -> None:
        """An operator (or a request's load) acts on it: the pending restart is cancelled
        and the count reset; its deaths during requests are kept unless it was held
        (only an operator acts on a held model: its leases are refused)."""
        if self._restarts.task is not None:
            self._restarts.task.cancel()
        kept = RestartFacts() if self._restarts.held else RestartFacts(deaths=self._restarts.deaths)
        if self._restarts != kept:
            self._restarts = kept
            self._changed()

    def died_serving(self, deaths: Deaths, held: bool, reason: str) -> None:
        """Its deaths in a row during requests; `held`: a crash loop, failed until an
        operator acts (with why in its failure)."""
        self._restarts = replace(self._restarts, deaths=deaths, held=held)
        if held and self.state is State.FAILED:
            previous = self._status.failure
            lines = previous.last_lines if previous is not None else ()
            exit_code = previous.exit_code if previous is not None else None
            self._status = replace(self._status, failure=Failure(reason, exit_code, lines))
        self._changed()

    # ---- intents: usage --------------------------------------------------------------------

    def asked_for(self, weight: float = 1.0) -> None:
        """A request for it (`weight`: several at once, as decayed): lru's clock moves
        and cost_aware's demand counts it."""
        demand = self._usage.demand + weight
        self._usage = replace(self._usage, last_used=time.time(), demand=demand)
        self._changed()

    def demand_decayed(self, factor: float) -> None:
        """Every request for any model decays everyone's demand."""
        self._usage = replace(self._usage, demand=self._usage.demand * factor)

    def touched(self) -> None:
        """Switched to while running: its idle clock starts again."""
        self._usage = replace(self._usage, last_active=time.monotonic())
        self._changed()

    def seen_activity(self, activity: Activity | None, now: float) -> None:
        """Its request metrics read at `now`: the rates since the last reading, and when
        it was last seen busy (the probes sent since the last reading are not activity)."""
        usage = self._usage
        probed = usage.probes - usage.probes_seen
        self._usage = replace(
            usage,
            activity=activity,
            rates=rates(usage.activity, activity),
            last_active=last_active(usage.activity, activity, usage.last_active, now, probed),
            probes_seen=usage.probes,
            progress_at=progressed(usage.activity, activity, usage.progress_at, now),
        )
        # Polled every few seconds for every running model: status is rebuilt only when
        # what it shows (the rates) moved.
        if self._usage.rates != usage.rates:
            self._changed()

    def probed(self, answer: str) -> None:
        """It answered a token probe (probes.py) with `answer`."""
        usage = self._usage
        self._usage = replace(
            usage, probed_at=time.monotonic(), probe_answer=answer, probes=usage.probes + 1
        )

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
        died: Died | None = None,
        config_changed: bool = False,
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
        self._announce(
            Transition(self, old, new, reason, failure, load_s, wake_s, died, config_changed)
        )

    def _apply_pending(self) -> bool:
        if self._pending_config is None:
            return False
        self._config, self._pending_config = self._pending_config, None
        return True

    def _changed(self) -> None:
        self._revision.bump()
