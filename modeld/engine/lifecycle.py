"""Lifecycle: the registry of Models, and their backends' start, stop and load watch.

Each Model changes its own state through its intents (model.py); the registry hears
every transition they announce, logs and publishes it as an event, and tells the
listeners (learning, the history, the metrics, the restart policy: engine.py says what
else each hears, and from whom).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from modeld.adapters.runtime.base import BackendStatus, Runtime
from modeld.adapters.socketdir import prepare_backend_socket
from modeld.adapters.vllm import VllmClient
from modeld.core.config import Config
from modeld.core.errors import (
    GpuUnavailable,
    LoadFailed,
    ModeldError,
    OperationFailed,
    OperationTimeout,
    RuntimeUnavailable,
    UnknownModel,
)
from modeld.core.naming import not_found
from modeld.core.states import Failure, State
from modeld.engine.facts import LoadTask, Revision
from modeld.engine.ledger import GpuLedger
from modeld.engine.model import Model, Transition
from modeld.engine.readiness import await_ready
from modeld.wire.events import EventBus, StateChanged

log = structlog.get_logger("modeld.engine.lifecycle")


Listener = Callable[[Transition], None]
# cost_aware: at each request every model's demand decays by this factor, so favourites
# that stop being asked for stop being protected within a few dozen requests.
DEMAND_DECAY = 0.95


class Lifecycle:
    """Holds the Models, hears their transitions; starts, stops and watches backends."""

    def __init__(
        self,
        config: Config,
        runtimes: dict[str, Runtime],
        vllm: VllmClient,
        ledger: GpuLedger,
    ) -> None:
        self.config = config
        self.runtimes = runtimes
        self.vllm = vllm
        self.ledger = ledger
        # What the registry says as models change: each transition (and each step of a
        # switch) as an event, and a count every shown change bumps (`status`).
        self.events = EventBus()
        self.revision = Revision()
        self.records = {name: self.new_model(name) for name in config.models}
        self.runtime_errors: dict[str, str | None] = {name: None for name in runtimes}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        # Set once the daemon stops: callers waiting on a load are answered at once.
        self.closing = asyncio.Event()

    async def wait_load(
        self, record: Model, load: LoadTask, timeout: float | None
    ) -> ModeldError | None:
        """A load's outcome; a caller's own deadline (OperationTimeout: the load goes on), the
        daemon stopping (OperationFailed: nobody is kept waiting through its shutdown), or
        the load ended by a stop (LoadFailed saying so). The load is never cancelled here."""
        closed = asyncio.ensure_future(self.closing.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({load, closed}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise OperationTimeout(
                f"{record.name} is still loading after {timeout}s; the load goes on",
                model=record.name,
                state=record.state.value,
            ) from None
        finally:
            closed.cancel()
        if load.cancelled():
            return LoadFailed(
                f"{record.name}: stopped while loading (the load was ended by a stop)",
                model=record.name,
                reason="stopped",
            )
        if load.done():
            return load.result()
        raise OperationFailed(
            f"modeld is stopping: no longer waiting for {record.name} to load",
            model=record.name,
            state=record.state.value,
            reason="shutting_down",
        )

    def new_model(self, name: str, config: Config | None = None) -> Model:
        """A stopped Model for a configured model."""
        return Model((config or self.config).models[name], self.revision, self._announce)

    def count_demand(self, record: Model) -> None:
        """A request for `record`'s model (a switch, or a lease granted without one):
        cost_aware's demand decays everyone's and counts for it; lru's clock moves."""
        for other in self.records.values():
            other.demand_decayed(DEMAND_DECAY)
        record.asked_for()

    def on_transition(self, listener: Listener) -> None:
        """Call `listener` after every transition, in the order they were added."""
        self._listeners.append(listener)

    def record(self, name: str, managed: bool = False) -> Model:
        """A model's record; UnknownModel (with the names available) if there is none, or
        (`managed`) if a reload removed it from the config."""
        record = self.records.get(self.canonical(name))
        if record is None or (managed and record.unmanaged):
            available = sorted(n for n, r in self.records.items() if not r.unmanaged)
            if record is not None:
                message = (
                    f"Model '{name}' not found: it was removed from the config (it runs "
                    "unmanaged until stopped)."
                )
            else:
                message = not_found(name, available, self.config.aliases())
            raise UnknownModel(
                message,
                model=name,
                available=available,
            )
        return record

    def canonical(self, name: str) -> str:
        """The model a name or one of its aliases names (an unknown name, unchanged)."""
        return self.config.canonical(name)

    async def changed(self) -> None:
        """Return at the next transition."""
        await self._changed.wait()

    def _announce(self, event: Transition) -> None:
        """A Model changed state: log it, publish it, tell the listeners, wake waiters."""
        failure = event.failure
        announced = StateChanged(
            model=event.model.name,
            from_state=event.old.value,
            to_state=event.new.value,
            reason=event.reason,
            failure=failure.reason if failure is not None else None,
            exit_code=failure.exit_code if failure is not None else None,
        )
        # The log line carries the failure's fields only when there is one.
        unlogged = {"type", "seq", "time", "dropped_before"}
        if failure is None:
            unlogged |= {"failure", "exit_code"}
        log.info("model.transition", **announced.model_dump(exclude=unlogged))
        self.events.publish(announced)
        for listener in self._listeners:
            listener(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ---- backends -----------------------------------------------------------------------

    def runtime(self, record: Model) -> Runtime:
        """The runtime a model's backend runs in."""
        return self.runtimes[record.config.runtime]

    def seen_runtime(self, kind: str, error: str | None) -> None:
        """A runtime answered (error None) or did not: shown in `status`."""
        if self.runtime_errors.get(kind) != error:
            self.runtime_errors[kind] = error
            self.revision.bump()

    async def inspect(self, record: Model) -> BackendStatus:
        """What its runtime says of its backend; whether the runtime answered is noted for
        `status` (RuntimeUnavailable is raised after noting it)."""
        kind = record.config.runtime
        try:
            backend = await self.runtime(record).inspect(record.config)
        except RuntimeUnavailable as exc:
            self.seen_runtime(kind, exc.message)
            raise
        self.seen_runtime(kind, None)
        return backend

    async def check_runtime(self, record: Model) -> None:
        """Fail with RuntimeUnavailable before changing anything if the engine is down."""
        await self.inspect(record)

    def begin_loading(
        self, record: Model, reason: str, backend: BackendStatus | None = None
    ) -> None:
        """Watch a backend modeld did not start (found running, or awake again) to health;
        how long that takes says nothing about how long a load takes."""
        record.begin_watch(reason, backend)
        record.watching(
            asyncio.create_task(self._watch_load(record, timed=False), name=f"load-{record.name}")
        )

    async def start_model(self, record: Model) -> None:
        """Start the backend and begin watching its load (the caller waits on record.load_task)."""
        record.begin_start()
        try:
            if record.config.socket_path is not None:
                # Made (or checked) before the backend binds there: only the gateway's
                # group may reach it.
                await asyncio.to_thread(
                    prepare_backend_socket, record.config, self.config.daemon.socket_group
                )
            record.started(await self.runtime(record).start(record.config))
        except ModeldError as exc:
            record.failed("start failed", Failure(exc.message))
            raise
        except Exception as exc:
            # Whatever goes wrong, the model must not be left `loading` with no load.
            log.exception("runtime.start_crashed", model=record.name)
            record.failed("start failed", Failure(repr(exc)))
            raise LoadFailed(
                f"{record.name}: start failed: {exc!r}", model=record.name, reason=repr(exc)
            ) from exc
        record.watching(
            asyncio.create_task(self._watch_load(record, timed=True), name=f"load-{record.name}")
        )

    async def stop_model(self, record: Model, reason: str) -> None:
        """End its load if any, stop its backend, note the memory it is releasing."""
        if record.load_task is not None and not record.load_task.done():
            record.load_task.cancel()
            await asyncio.wait({record.load_task})
        record.watching(None)
        if record.state is State.STOPPED:
            return
        reading = self.ledger.reading
        releasing = None
        if reading is not None:
            held, _ = record.held(reading)
            until = time.monotonic() + self.config.daemon.memory_release_timeout_s
            releasing = (held, self.ledger.unattributed(reading), until)
        record.stopping(reason, releasing)
        try:
            await self.runtime(record).stop(record.config)
        except Exception as exc:
            # Never left `stopping`: a stop that failed, for any reason, says so.
            if not isinstance(exc, ModeldError):
                log.exception("runtime.stop_crashed", model=record.name)
                exc = OperationFailed(
                    f"{record.name}: stop failed: {exc!r}", model=record.name, reason=repr(exc)
                )
            record.failed("stop failed", Failure(f"stop failed: {exc.message}"))
            raise exc from None
        record.stopped(reason)
        if record.unmanaged:
            # Removed from the config by a reload: once stopped, it is forgotten.
            del self.records[record.name]
            log.info("model.forgotten", model=record.name)

    async def measured(self) -> None:
        """A backend now answers: what the models hold is what the driver measures now."""
        with contextlib.suppress(GpuUnavailable):
            await self.ledger.read(self.records.values())  # its listeners learn from it

    async def _watch_load(self, record: Model, timed: bool) -> ModeldError | None:
        """Race health against the backend's exit and the load deadline; record the outcome,
        and (`timed`: a load modeld started) how long it took."""
        started = record.loading.started or time.monotonic()
        try:
            await await_ready(
                record.config,
                self.runtime(record),
                self.vllm,
                self.config.daemon.health_poll_interval_s,
                record.saw_health,
            )
        except Exception as exc:
            failure = exc if isinstance(exc, ModeldError) else _crashed(record, exc)
            # Nothing half-loaded may keep GPU memory: stop it (a no-op once it exited).
            try:
                await self.runtime(record).stop(record.config)
            except Exception:
                log.exception("load.stop_after_failure_failed", model=record.name)
            lines = tuple(failure.data.get("last_lines", ()))
            why = Failure(failure.message, failure.data.get("exit_code"), lines)
            record.failed("load failed", why)
            return failure
        load_s = time.monotonic() - started
        if await self.vllm.says_asleep(record.config):
            # Found at startup (or woken and parked again behind modeld's back) asleep.
            record.found_asleep()
            return None
        record.became_running("healthy", load_s if timed else None)
        # Its memory is now what the driver measures: refresh what `status` shows.
        await self.measured()
        return None


def _crashed(record: Model, exc: Exception) -> LoadFailed:
    """An unexpected error while watching a load, as the load's failure."""
    log.error("load.watch_crashed", model=record.name, error=repr(exc))
    return LoadFailed(f"{record.name}: load failed: {exc!r}", model=record.name, reason=repr(exc))
