"""The engine's sub-facades, each over the parts it needs: `ModelOps` (switch, start,
stop, restart, preload, logs), `LeaseOps` (acquire, release) and `Events`. What they return is
typed (wire/results.py); the API layer turns it into JSON."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import structlog

from modeld.core.errors import (
    CrashLooping,
    ModeldError,
    ModelsBusy,
    OperationTimeout,
    WouldLoad,
)
from modeld.core.states import State
from modeld.engine.backends import Backends
from modeld.engine.history import History
from modeld.engine.leases import Leases
from modeld.engine.metrics import MetricsSink
from modeld.engine.model import Model
from modeld.engine.operations import Asker
from modeld.engine.registry import Registry
from modeld.engine.switching import Switcher
from modeld.wire.events import Subscription
from modeld.wire.history import HistoryEntry
from modeld.wire.results import (
    LeaseResult,
    LeaseUpdated,
    LogsResult,
    PlanResult,
    ReleaseResult,
    StopResult,
    SwitchResult,
)

log = structlog.get_logger("modeld.engine.facades")


class ModelOps:
    """What callers do to models: switch, start, stop, restart, preload; their logs."""

    def __init__(
        self, backends: Backends, switcher: Switcher, history: History, metrics: MetricsSink
    ) -> None:
        self._registry = backends.registry
        self._backends = backends
        self._switcher = switcher
        self._history = history
        self._metrics = metrics

    def history(self, name: str | None = None, limit: int = 50) -> list[HistoryEntry]:
        """What was done to `name` (or to every model) and why, the latest `limit`."""
        if name is not None:
            name = self._registry.canonical(name)
            self._registry.model(name)  # UnknownModel for a name never configured
        return self._history.entries(name, limit)

    def underway(self, name: str) -> bool:
        """Whether a switch, start or restart of `name` is in progress."""
        return self._switcher.underway(name)

    async def settled(self, name: str) -> None:
        """Return once no switch, start or restart of `name` is in progress."""
        await self._switcher.settled(name)

    async def plan(self, name: str, *, force: bool = False) -> PlanResult:
        """What `switch` would do to bring `name` up now, and why; changes nothing."""
        name = self._registry.canonical(name)
        model = self._registry.model(name, managed=True)
        return await self._switcher.preview(model, force)

    async def switch(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Asker | None = None,
        force: bool = False,
    ) -> SwitchResult:
        """Make `name` the model that answers: stop what must go (draining models that
        serve requests, unless `force`), start it, wait for health."""
        name = self._registry.canonical(name)  # an alias names its model
        model = self._registry.model(name, managed=True)
        started, outcome = time.monotonic(), "error"
        try:
            result = await self._switcher.bring_up(
                "switch", model, caller, evict=True, wait=wait, timeout=timeout, force=force
            )
            outcome = result.status
            return result
        except ModeldError as exc:
            outcome = exc.data["error"]
            if isinstance(exc, ModelsBusy):
                self._metrics.models_busy()
            raise
        finally:
            self._metrics.switch_done(outcome, time.monotonic() - started)

    async def start(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Asker | None = None,
    ) -> SwitchResult:
        """Start `name` only if it fits without stopping anything."""
        name = self._registry.canonical(name)  # an alias names its model
        model = self._registry.model(name, managed=True)
        return await self._switcher.bring_up(
            "start", model, caller, evict=False, wait=wait, timeout=timeout
        )

    async def stop(
        self, name: str, *, caller: Asker | None = None, force: bool = False
    ) -> StopResult:
        """Stop `name`'s backend once its requests in flight have ended (ModelsBusy past
        drain_timeout_s), or at once with `force`; stopping a stopped model is fine."""
        name = self._registry.canonical(name)  # an alias names its model
        with self._busy_counted():
            return await self._switcher.bring_down(self._registry.model(name), caller, force)

    @contextlib.contextmanager
    def _busy_counted(self) -> Iterator[None]:
        """A refusal for models still serving requests is counted (metrics)."""
        try:
            yield
        except ModelsBusy:
            self._metrics.models_busy()
            raise

    async def restart(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Asker | None = None,
    ) -> SwitchResult:
        """Stop `name` if it runs (once its requests in flight have ended), wait for its
        memory, and start it again."""
        name = self._registry.canonical(name)  # an alias names its model
        model = self._registry.model(name, managed=True)
        with self._busy_counted():
            async with self._switcher.no_requests(name, force=False):
                result = await self._switcher.bring_up(
                    "restart", model, caller, evict=False, wait=wait, timeout=timeout, restart=True
                )
        return result.model_copy(update={"status": "restarted"})

    async def preload(self) -> dict[str, str]:
        """Start the configured `preload` models in order, each only if it fits without
        stopping anything; what became of each (never raises: the daemon serves on)."""
        outcome: dict[str, str] = {}
        for name in self._registry.config.daemon.preload:
            try:
                result = await self.start(name, caller={"preload": 1})
                outcome[name] = result.state or result.status
            except ModeldError as exc:
                outcome[name] = exc.data["error"]
                log.warning("preload.skipped", model=name, error=exc.message)
        log.info("preload.done", outcome=outcome)
        return outcome

    async def logs(self, name: str, lines: int) -> LogsResult:
        """A model's backend's last output lines (Docker logs or captured output)."""
        name = self._registry.canonical(name)  # an alias names its model
        model = self._output_of(self._registry.model(name))
        lines_kept = await self._backends.runtime(model).logs(model.config, lines)
        return LogsResult(model=name, lines=lines_kept)

    def follow_logs(self, name: str, lines: int) -> AsyncIterator[str]:
        """A model's backend's last lines, then each new one until the backend ends."""
        name = self._registry.canonical(name)  # an alias names its model
        model = self._output_of(self._registry.model(name))
        return self._backends.runtime(model).follow(model.config, lines)

    def _output_of(self, model: Model) -> Model:
        """Whose output a model's logs are: an adapter's are its base's (vLLM's lines)."""
        return self._backends.loras.base_of(model) if model.config.base else model

    # ---- operations -----------------------------------------------------------------------


class LeaseOps:
    """Requests in flight: a lease on a model once it runs and answers, and its end."""

    def __init__(
        self, registry: Registry, models: ModelOps, leases: Leases, metrics: MetricsSink
    ) -> None:
        self._registry = registry
        self._models = models
        self._leases = leases
        self._metrics = metrics

    async def acquire(
        self,
        name: str,
        *,
        owner: int,
        timeout: float | None = None,
        caller: Asker | None = None,
        load: bool = True,
        request_bytes: int | None = None,
        standing: bool = False,
    ) -> LeaseResult:
        """A lease on `name` once it runs and answers: switching, waking or joining a load
        as needed (concurrent acquires share one load). While it drains, new acquires
        wait their turn; a waiting acquire protects the model once it runs. With `load`
        false, WouldLoad instead of causing a load or a wake (joining one is fine). A model
        held for a crash loop is refused at once (CrashLooping)."""
        name = self._registry.canonical(name)  # an alias names its model
        with self._leases.queued(self._registry.model(name, managed=True)):
            return await self._acquire(
                name, (owner, request_bytes, standing), timeout, caller, load
            )

    async def _acquire(
        self,
        name: str,
        owner: tuple[int, int | None, bool],
        timeout: float | None,
        caller: Asker | None,
        load: bool,
    ) -> LeaseResult:
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._leases.gate(name)
        except TimeoutError:
            raise OperationTimeout(
                f"{name} was still draining after {timeout}s; no lease", model=name
            ) from None
        switched = False
        with self._leases.waiting(name):
            while True:
                model = self._registry.model(name, managed=True)
                if model.state is State.RUNNING:
                    if not switched:  # a switch counted this request already
                        self._registry.count_demand(model)
                    return self._grant(model, owner, started, caller)
                held = self._held(model)
                if held is not None:
                    raise held
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise OperationTimeout(f"{name} did not run within {timeout}s", model=name)
                if not load and self._models.underway(name):
                    # A load is on its way (room is being made for it): join it.
                    await self._settled(name, left, timeout)
                    continue
                if not load and model.state is not State.LOADING and not self._cheap(model):
                    raise WouldLoad(
                        f"{name} is {model.state.value}: a lease would need a load or a wake",
                        model=name,
                        state=model.state.value,
                    )
                try:
                    switched = True
                    await self._models.switch(name, timeout=left, caller=caller)
                except ModelsBusy:
                    continue  # its turn comes once the drain allows; our timeout rules

    def _held(self, model: Model) -> CrashLooping | None:
        """A model held for a crash loop (or an adapter whose base is): the refusal."""
        if model.config.base and not model.restarts.held:
            model = self._registry.model(model.config.base)
        if not model.restarts.held or model.state is State.RUNNING:
            return None
        failure = model.status.failure
        return CrashLooping(
            f"{model.name} is held failed: {failure.reason if failure else 'crash loop'}; "
            f"start it (modelctl start {model.name}) once the cause is found",
            model=model.name,
            deaths=len(model.restarts.deaths),
            request_bytes=[list(serving) for serving in model.restarts.deaths],
        )

    def _cheap(self, model: Model) -> bool:
        """An adapter whose base runs: loading it takes a fraction of a second and moves
        no model, so a lease that may not cause a load may still cause that."""
        base = model.config.base
        return base is not None and self._registry.model(base).state is State.RUNNING

    async def _settled(self, name: str, left: float | None, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(left):
                await self._models.settled(name)
        except TimeoutError:
            raise OperationTimeout(f"{name} did not run within {timeout}s", model=name) from None

    def acquire_now(
        self,
        name: str,
        *,
        owner: int,
        caller: Asker | None = None,
        request_bytes: int | None = None,
        standing: bool = False,
    ) -> LeaseResult | None:
        """A lease at once, when `name` runs and is not draining (the common case for a
        router: answered without a task); None when it must wait (then `acquire`)."""
        name = self._registry.canonical(name)  # an alias names its model
        model = self._registry.model(name, managed=True)
        if model.state is not State.RUNNING or self._leases.draining(name):
            return None
        self._registry.count_demand(model)
        return self._grant(model, (owner, request_bytes, standing), time.monotonic(), caller)

    def _grant(
        self,
        model: Model,
        owner: tuple[int, int | None, bool],
        started: float,
        caller: Asker | None,
    ) -> LeaseResult:
        lease = self._leases.grant(model, *owner)
        waited = time.monotonic() - started
        self._metrics.acquired(model.name, waited)
        log.info("lease.granted", model=model.name, lease=lease.id, caller=dict(caller or {}))
        return LeaseResult(
            lease=lease.id,
            model=model.name,
            endpoint=model.config.endpoint,
            served_model_name=model.config.served_name,
            state=model.state.value,
            leases=model.usage.leases,
            waited_seconds=round(waited, 3),
        )

    def update(
        self,
        lease: str,
        *,
        owner: int | None,
        in_flight: int,
        served: int = 0,
        cut_bytes: list[int] | None = None,
    ) -> LeaseUpdated:
        """A standing lease's requests: in flight now, `served` since its last update
        (each counted as a request for the model, as an acquire is), and the sizes of
        those its backend cut off."""
        updated = self._leases.update(lease, owner, in_flight, cut_bytes or [])
        if served:
            self._registry.count_demand(self._registry.model(updated.model), served)
        return LeaseUpdated(model=updated.model, leases=self._leases.held(updated.model))

    def release(
        self, lease: str, *, owner: int | None = None, broken: bool = False
    ) -> ReleaseResult:
        """End a lease (only the connection's own, given `owner`; `broken`: its backend
        cut its request off)."""
        ended = self._leases.release(lease, owner, broken)
        return ReleaseResult(
            released=True, model=ended.model, leases=self._leases.held(ended.model)
        )

    def release_owner(self, owner: int) -> int:
        """A connection closed: its leases end at once; how many."""
        ended = self._leases.release_owner(owner)
        if ended:
            log.info("lease.connection_closed", owner=owner, released=ended)
        return ended


class Events:
    """Live events (state changes, switch progress), and the next transition."""

    def __init__(self, registry: Registry) -> None:
        self._bus = registry.events
        self._revision = registry.revision
        self._registry = registry

    def subscribe(self) -> Subscription:
        """Events from now on: state changes and switch progress."""
        self._revision.bump()  # `status` counts the subscribers
        return self._bus.subscribe()

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription."""
        self._revision.bump()
        self._bus.unsubscribe(subscription)

    async def changed(self) -> None:
        """Return at the next state transition."""
        await self._registry.changed()
