"""Lifecycle: the models' records, their one transition function, and the backends'
start, stop and load watch.

Every state change goes through `transition`, over the table in `states.py`, and is
announced as a typed `Transition` to the listeners (events, metrics, learning, the
restart policy), which react to it: nothing calls them from elsewhere. Transitions are
synchronous (no await inside), so what the monitor reports between operations is
applied atomically on the event loop; each observation checks the record's generation
first, so one made before another change is dropped instead of applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from modeld.adapters.runtime.base import Runtime
from modeld.adapters.socketdir import prepare_backend_socket
from modeld.adapters.vllm import Health, VllmClient
from modeld.core.config import Config
from modeld.core.errors import (
    GpuUnavailable,
    LoadFailed,
    ModeldError,
    OperationFailed,
    RuntimeUnavailable,
    UnknownModel,
)
from modeld.core.states import Failure, ModelStatus, State, check_transition
from modeld.engine.events import EventBus
from modeld.engine.ledger import GpuLedger
from modeld.engine.readiness import await_ready
from modeld.engine.record import ModelRecord, Revision
from modeld.engine.views import held_memory

log = structlog.get_logger("modeld.engine.lifecycle")


@dataclass(frozen=True)
class Transition:
    """A model's state changed: from, to, why; how long the load or wake took when this
    is the end of one modeld started and timed."""

    record: ModelRecord
    old: State
    new: State
    reason: str
    failure: Failure | None = None
    load_s: float | None = None
    wake_s: float | None = None


Listener = Callable[[Transition], None]


class Lifecycle:
    """Owns the records and their transitions; starts, stops and watches backends."""

    def __init__(
        self,
        config: Config,
        runtimes: dict[str, Runtime],
        vllm: VllmClient,
        ledger: GpuLedger,
        events: EventBus,
        revision: Revision,
    ) -> None:
        self.config = config
        self.runtimes = runtimes
        self.vllm = vllm
        self.ledger = ledger
        self.events = events
        self.revision = revision
        self.records = {name: self.new_record(model.name) for name, model in config.models.items()}
        self.runtime_errors: dict[str, str | None] = {name: None for name in runtimes}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        # Set by the learning part: what a record's config change means for its figures,
        # and a refresh of measured memory once a backend answers.
        self.config_changed: Callable[[ModelRecord], None] = lambda _: None
        self.measured: Callable[[], Awaitable[None]] = _nothing

    def new_record(self, name: str, config: Config | None = None) -> ModelRecord:
        """A stopped record for a configured model."""
        model = (config or self.config).models[name]
        return ModelRecord(model, ModelStatus(State.STOPPED, time.time()), changes=self.revision)

    def on_transition(self, listener: Listener) -> None:
        """Call `listener` after every transition, in the order they were added."""
        self._listeners.append(listener)

    def record(self, name: str, managed: bool = False) -> ModelRecord:
        """A model's record; UnknownModel (with the names available) if there is none, or
        (`managed`) if a reload removed it from the config."""
        record = self.records.get(name)
        if record is None or (managed and record.unmanaged):
            available = sorted(n for n, r in self.records.items() if not r.unmanaged)
            why = " (removed from the config; it runs unmanaged until stopped)" if record else ""
            raise UnknownModel(
                f"Model '{name}' not found{why}. Available: {available}",
                model=name,
                available=available,
            )
        return record

    async def changed(self) -> None:
        """Return at the next transition."""
        await self._changed.wait()

    # ---- the one transition function ----------------------------------------------------

    def transition(
        self,
        record: ModelRecord,
        new: State,
        reason: str,
        failure: Failure | None = None,
        *,
        load_s: float | None = None,
        wake_s: float | None = None,
    ) -> None:
        """The one place a model's state changes: validate, stamp, log, tell listeners."""
        old = record.state
        check_transition(old, new)
        record.status = ModelStatus(new, time.time(), failure)
        record.generation += 1
        if new is State.RUNNING:
            # The idle clock starts when it answers; activity is read afresh from here.
            record.usage.last_active, record.usage.activity = time.monotonic(), None
        fields: dict[str, Any] = {
            "model": record.name,
            "from_state": old.value,
            "to_state": new.value,
            "reason": reason,
        }
        if failure is not None:
            fields.update(failure=failure.reason, exit_code=failure.exit_code)
        log.info("model.transition", **fields)
        self.events.publish("state", **fields)
        event = Transition(record, old, new, reason, failure, load_s, wake_s)
        for listener in self._listeners:
            listener(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ---- backends -----------------------------------------------------------------------

    def runtime(self, record: ModelRecord) -> Runtime:
        """The runtime a model's backend runs in."""
        return self.runtimes[record.config.runtime]

    def seen_runtime(self, kind: str, error: str | None) -> None:
        """A runtime answered (error None) or did not: shown in `status`."""
        if self.runtime_errors.get(kind) != error:
            self.runtime_errors[kind] = error
            self.revision.bump()

    async def check_runtime(self, record: ModelRecord) -> None:
        """Fail with RuntimeUnavailable before changing anything if the engine is down."""
        kind = record.config.runtime
        try:
            await self.runtime(record).inspect(record.config)
        except RuntimeUnavailable as exc:
            self.seen_runtime(kind, exc.message)
            raise
        self.seen_runtime(kind, None)

    def begin_loading(self, record: ModelRecord, reason: str) -> None:
        """Watch a backend modeld did not start (found running, or awake again) to health;
        how long that takes says nothing about how long a load takes."""
        self.transition(record, State.LOADING, reason)
        record.loading.started = time.monotonic()
        record.load = asyncio.create_task(
            self._watch_load(record, timed=False), name=f"load-{record.name}"
        )

    async def start_model(self, record: ModelRecord) -> None:
        """Start the backend and begin watching its load (the caller waits on record.load)."""
        if record.pending_config is not None:
            record.config, record.pending_config = record.pending_config, None
            self.config_changed(record)
        record.memory.over_plan_gb = None
        record.memory.releasing_gb = None
        runtime = self.runtime(record)
        self.transition(record, State.LOADING, "start")
        record.loading.started = time.monotonic()
        record.health = Health.UNKNOWN
        try:
            if (sock := record.config.socket_path) is not None:
                # Made (or checked) before the backend binds there: only the gateway's
                # group may reach it.
                await asyncio.to_thread(
                    prepare_backend_socket, sock, self.config.daemon.socket_group
                )
            record.backend = await runtime.start(record.config)
        except ModeldError as exc:
            self.transition(record, State.FAILED, "start failed", Failure(exc.message))
            raise
        except Exception as exc:
            # Whatever goes wrong, the model must not be left `loading` with no load.
            log.exception("runtime.start_crashed", model=record.name)
            self.transition(record, State.FAILED, "start failed", Failure(repr(exc)))
            raise LoadFailed(
                f"{record.name}: start failed: {exc!r}", model=record.name, reason=repr(exc)
            ) from exc
        record.load = asyncio.create_task(
            self._watch_load(record, timed=True), name=f"load-{record.name}"
        )

    async def stop_model(self, record: ModelRecord, reason: str) -> None:
        """End its load if any, stop its backend, note the memory it is releasing."""
        if record.load is not None and not record.load.done():
            record.load.cancel()
            await asyncio.wait({record.load})
        record.load = None
        if record.state is State.STOPPED:
            return
        self.transition(record, State.STOPPING, reason)
        reading = self.ledger.reading
        if reading is not None:
            held, _ = held_memory(record, reading)
            record.memory.releasing_gb = held
            record.memory.releasing_base = self.ledger.unattributed(reading)
            timeout = self.config.daemon.memory_release_timeout_s
            record.memory.releasing_until = time.monotonic() + timeout
        try:
            await self.runtime(record).stop(record.config)
        except Exception as exc:
            # Never left `stopping`: a stop that failed, for any reason, says so.
            if not isinstance(exc, ModeldError):
                log.exception("runtime.stop_crashed", model=record.name)
                exc = OperationFailed(
                    f"{record.name}: stop failed: {exc!r}", model=record.name, reason=repr(exc)
                )
            self.transition(
                record, State.FAILED, "stop failed", Failure(f"stop failed: {exc.message}")
            )
            raise exc from None
        record.health = Health.UNKNOWN
        record.backend = None
        self.transition(record, State.STOPPED, reason)
        if record.pending_config is not None:
            record.config, record.pending_config = record.pending_config, None
        if record.unmanaged:
            # Removed from the config by a reload: once stopped, it is forgotten.
            del self.records[record.name]
            log.info("model.forgotten", model=record.name)

    async def _watch_load(self, record: ModelRecord, timed: bool) -> ModeldError | None:
        """Race health against the backend's exit and the load deadline; record the outcome,
        and (`timed`: a load modeld started) how long it took."""
        started = record.loading.started or time.monotonic()
        try:
            await await_ready(
                record.config,
                self.runtime(record),
                self.vllm,
                self.config.daemon.health_poll_interval_s,
                lambda health: setattr(record, "health", health),
            )
        except Exception as exc:
            failure = exc if isinstance(exc, ModeldError) else _crashed(record, exc)
            # Nothing half-loaded may keep GPU memory: stop it (a no-op once it exited).
            try:
                await self.runtime(record).stop(record.config)
            except Exception:
                log.exception("load.stop_after_failure_failed", model=record.name)
            record.load = None
            lines = tuple(failure.data.get("last_lines", ()))
            why = Failure(failure.message, failure.data.get("exit_code"), lines)
            self.transition(record, State.FAILED, "load failed", why)
            return failure
        load_s = time.monotonic() - started
        if await self.vllm.says_asleep(record.config):
            # Found at startup (or woken and parked again behind modeld's back) asleep.
            record.load = None
            self.transition(record, State.SLEEPING, "found asleep")
            return None
        if timed:
            record.loading.last_s = load_s
        record.load = None
        record.running_since = time.monotonic()
        self.transition(record, State.RUNNING, "healthy", load_s=load_s if timed else None)
        # Its memory is now what the driver measures: refresh what `status` shows.
        with contextlib.suppress(GpuUnavailable):
            await self.measured()
        return None


async def _nothing() -> None:
    return None


def _crashed(record: ModelRecord, exc: Exception) -> LoadFailed:
    """An unexpected error while watching a load, as the load's failure."""
    log.error("load.watch_crashed", model=record.name, error=repr(exc))
    return LoadFailed(f"{record.name}: load failed: {exc!r}", model=record.name, reason=repr(exc))
