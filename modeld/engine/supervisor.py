"""The Supervisor: the engine's facade, the one thing the daemon calls. It builds and
wires the parts below, each owning one concern, and passes each call to its part (it is
not yet small: 23 public methods; issue 22 splits it into a few sub-facades).

- lifecycle.py    records, the one transition function, start / stop / load watch
- operations.py   the lock (decisions, not waits), callers and audit, in-flight count
- switching.py    switch, start, restart: plan, make room, start; wait outside the lock
- parking.py      sleep mode: park, wake, idle unload
- restarts.py     restart = "on-failure", following transitions
- learning.py     learned figures, following transitions and GPU readings
- statusview.py   `status` and friends, from memory
- observations.py the monitor's one door into state

Reactions to transitions (events, metrics, learning, restarts) are listeners of the
lifecycle; nothing calls them from elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from modeld.adapters.gpu.base import GpuMonitor
from modeld.adapters.runtime.base import BackendState, Runtime
from modeld.adapters.store import Store
from modeld.adapters.vllm import VllmClient
from modeld.core.config import Config, DaemonConfig, check_devices
from modeld.core.errors import (
    ModeldError,
    ModelsBusy,
    OperationTimeout,
    RuntimeUnavailable,
    WouldLoad,
)
from modeld.core.jsonraw import RawJSON
from modeld.core.states import State
from modeld.engine.events import EventBus, Subscription
from modeld.engine.learning import Learning
from modeld.engine.leases import Leases
from modeld.engine.ledger import GpuLedger
from modeld.engine.lifecycle import Lifecycle
from modeld.engine.metrics import MetricsSink, NoMetrics
from modeld.engine.model import Model, Revision, Transition
from modeld.engine.monitor import Monitor
from modeld.engine.observations import Observations
from modeld.engine.operations import Caller, Operations
from modeld.engine.parking import Parking
from modeld.engine.reloading import Reloader
from modeld.engine.restarts import Restarts
from modeld.engine.statusview import StatusView
from modeld.engine.switching import Switcher

log = structlog.get_logger("modeld.engine.supervisor")


class Supervisor:
    """Owns every model's state (through its parts) and serves operations on it."""

    def __init__(
        self,
        config: Config,
        gpu: GpuMonitor,
        runtimes: Mapping[str, Runtime],
        vllm: VllmClient | None = None,
        store: Store | None = None,
        config_path: Path | None = None,
        metrics: MetricsSink | None = None,
        host_ram: Callable[[], float | None] | None = None,
    ) -> None:
        self._config_path = config_path
        self._metrics = metrics or NoMetrics()
        self._events = EventBus()
        self._revision = Revision()
        ledger = GpuLedger(gpu, config, host_ram)
        life = Lifecycle(
            config, dict(runtimes), vllm or VllmClient(), ledger, self._events, self._revision
        )
        self._life = life
        self._learning = Learning(
            store or Store(config.daemon.state_dir), lambda: list(life.records.values())
        )
        self._ops = Operations(life)
        self._leases = Leases(life.records)
        self._parking = Parking(
            life, self._ops, self._learning, self._metrics, self._leases.protected
        )
        self._switcher = Switcher(life, self._ops, self._parking, self._leases, self._metrics)
        self._restarts = Restarts(self._switcher.bring_back)
        self._view = StatusView(life, lambda: self._ops.busy, lambda: self._events.count)
        self._observations = Observations(life, self._learning, self._parking, self._leases)
        life.config_changed = self._learning.config_changed
        life.measured = self._measure_memory
        for listener in (self._learning.on_transition, self._count, self._restarts.on_transition):
            life.on_transition(listener)
        self._monitor = Monitor(self._observations, ledger, life.vllm, self._daemon_settings)
        self._monitoring: asyncio.Task[None] | None = None
        self._reloader = Reloader(config_path, life, self._ops, self._learning)

    # ---- lifecycle of the daemon ----------------------------------------------------------

    async def startup(self) -> None:
        """Read the GPU, check every model's devices exist, find what already runs."""
        life = self._life
        reading = await life.ledger.read(life.records.values())
        check_devices(life.config.models, {d.index for d in reading.devices})
        await self._learning.load()
        for record in life.records.values():
            await self._find_running(record)
        await self.poll_once()
        self._monitoring = asyncio.create_task(self._monitor.run(), name="modeld-monitor")

    async def _find_running(self, record: Model) -> None:
        try:
            backend = await self._life.runtime(record).inspect(record.config)
        except RuntimeUnavailable as exc:
            self._life.seen_runtime(record.config.runtime, exc.message)
            return
        except ModeldError as exc:
            log.warning("startup.not_adopted", model=record.name, reason=exc.message)
            return
        if backend.state is BackendState.RUNNING:
            # Found running: watch it to health instead of restarting it.
            self._life.begin_loading(record, "found running at startup", backend)
            if grace := self._life.config.daemon.adopt_grace_s:
                # It may be streaming answers whose leases ended with the last daemon.
                self._leases.hold(record, grace)

    async def shutdown(self) -> None:
        """Stop watching; models in containers keep running, process children are stopped."""
        records = list(self._life.records.values())
        pending: list[asyncio.Task[Any] | None] = [self._monitoring]
        pending += [
            task for r in records for task in (r.load, r.restarts.task, r.usage.unload_task)
        ]
        tasks = [t for t in pending if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._leases.close()
        await self._learning.close()
        for runtime in self._life.runtimes.values():
            await runtime.close()
        await self._life.ledger.close()
        await self._life.vllm.close()

    async def poll_once(self) -> None:
        """One monitor pass now: GPU, each model's backend and health, downloads."""
        await self._monitor.poll_once()

    # ---- reactions to transitions ---------------------------------------------------------

    def _count(self, event: Transition) -> None:
        """Metrics follow transitions."""
        name = event.model.name
        if event.new is State.FAILED:
            self._metrics.failed(name)
        if event.load_s is not None:
            self._metrics.load_done(name, event.load_s)
        if event.wake_s is not None:
            self._metrics.woke(name, event.wake_s)

    async def _measure_memory(self) -> None:
        """After a backend answers: its memory is now what the driver measures."""
        self._learning.memory(await self._life.ledger.read(self._life.records.values()))

    # ---- queries: answered from memory -----------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every model's state in the seed's fields, and the GPU block (do not modify it)."""
        return self._view.status()

    def status_json(self, redacted: bool = False) -> RawJSON:
        """`status`, serialized once per change (`redacted`: without backend output)."""
        return self._view.status_json(redacted)

    def gpu(self) -> dict[str, Any]:
        """The last GPU reading in the seed's shape, with devices and freshness."""
        return self._view.gpu()

    def models(self) -> list[dict[str, Any]]:
        """The configured models."""
        return self._view.models()

    def summary(self) -> str:
        """One line for `systemctl status`."""
        return self._view.summary()

    async def changed(self) -> None:
        """Return at the next state transition."""
        await self._life.changed()

    def subscribe(self) -> Subscription:
        """Events from now on: state changes and switch progress."""
        self._revision.bump()
        return self._events.subscribe()

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription."""
        self._revision.bump()
        self._events.unsubscribe(subscription)

    async def logs(self, name: str, lines: int) -> dict[str, Any]:
        """A model's backend's last output lines (Docker logs or captured output)."""
        record = self._life.record(name)
        lines_kept = await self._life.runtime(record).logs(record.config, lines)
        return {"model": name, "lines": lines_kept}

    def follow_logs(self, name: str, lines: int) -> AsyncIterator[str]:
        """A model's backend's last lines, then each new one until the backend ends."""
        record = self._life.record(name)
        return self._life.runtime(record).follow(record.config, lines)

    # ---- operations -----------------------------------------------------------------------

    async def switch(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Caller | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Make `name` the model that answers: stop what must go (draining models that
        serve requests, unless `force`), start it, wait for health."""
        record = self._life.record(name, managed=True)
        started, outcome = time.monotonic(), "error"
        try:
            result = await self._switcher.load(
                "switch", record, caller, evict=True, wait=wait, timeout=timeout, force=force
            )
            outcome = result["status"]
            return result
        except ModeldError as exc:
            outcome = exc.data["error"]
            raise
        finally:
            self._metrics.switch_done(outcome, time.monotonic() - started)

    async def start(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """Start `name` only if it fits without stopping anything."""
        record = self._life.record(name, managed=True)
        return await self._switcher.load(
            "start", record, caller, evict=False, wait=wait, timeout=timeout
        )

    async def stop(
        self, name: str, *, caller: Caller | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Stop `name`'s backend once its requests in flight have ended (ModelsBusy past
        drain_timeout_s), or at once with `force`; stopping a stopped model is fine."""
        record = self._life.record(name)
        async with self._no_requests(name, force), self._ops.operation("stop", record, caller):
            if record.state is State.STOPPED:
                return {"status": "already_stopped", "model": name}
            await self._life.check_runtime(record)
            await self._life.stop_model(record, "requested")
            return {"status": "stopped", "model": name}

    @contextlib.asynccontextmanager
    async def _no_requests(self, name: str, force: bool) -> AsyncIterator[None]:
        """Drain `name` first if it serves requests (ModelsBusy past drain_timeout_s),
        keeping new acquires waiting until the block is done; `force` skips it."""
        drained = []
        if not force and self._leases.protected(name):
            drained = await self._switcher.drain([name], None)
        try:
            yield
        finally:
            self._leases.end_drain(drained)

    async def acquire(
        self,
        name: str,
        *,
        owner: int,
        timeout: float | None = None,
        caller: Caller | None = None,
        load: bool = True,
    ) -> dict[str, Any]:
        """A lease on `name` once it runs and answers: switching, waking or joining a load
        as needed (concurrent acquires share one load). While it drains, new acquires
        wait their turn; a waiting acquire protects the model once it runs. With `load`
        false, WouldLoad instead of causing a load or a wake (joining one is fine)."""
        with self._leases.queued(self._life.record(name, managed=True)):
            return await self._acquire(name, owner, timeout, caller, load)

    async def _acquire(
        self, name: str, owner: int, timeout: float | None, caller: Caller | None, load: bool
    ) -> dict[str, Any]:
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
                record = self._life.record(name, managed=True)
                if record.state is State.RUNNING:
                    if not switched:  # a switch counted this request already
                        self._switcher.count_demand(record)
                    return self._grant(record, owner, started, caller)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise OperationTimeout(f"{name} did not run within {timeout}s", model=name)
                if not load and record.state is not State.LOADING:
                    raise WouldLoad(
                        f"{name} is {record.state.value}: a lease would need a load or a wake",
                        model=name,
                        state=record.state.value,
                    )
                try:
                    switched = True
                    await self.switch(name, timeout=left, caller=caller)
                except ModelsBusy:
                    continue  # its turn comes once the drain allows; our timeout rules

    def acquire_now(
        self, name: str, *, owner: int, caller: Caller | None = None
    ) -> dict[str, Any] | None:
        """A lease at once, when `name` runs and is not draining (the common case for a
        router: answered without a task); None when it must wait (then `acquire`)."""
        record = self._life.record(name, managed=True)
        if record.state is not State.RUNNING or self._leases.draining(name):
            return None
        self._switcher.count_demand(record)
        return self._grant(record, owner, time.monotonic(), caller)

    def _grant(
        self, record: Model, owner: int, started: float, caller: Caller | None
    ) -> dict[str, Any]:
        lease = self._leases.grant(record, owner)
        waited = time.monotonic() - started
        self._metrics.acquired(record.name, waited)
        log.info("lease.granted", model=record.name, lease=lease.id, **dict(caller or {}))
        return {
            "lease": lease.id,
            "model": record.name,
            "endpoint": record.config.endpoint,
            "served_model_name": record.config.served_model_name or record.name,
            "state": record.state.value,
            "leases": record.usage.leases,
            "waited_seconds": round(waited, 3),
        }

    def release(self, lease: str, *, owner: int | None = None) -> dict[str, Any]:
        """End a lease (only the connection's own, given `owner`)."""
        ended = self._leases.release(lease, owner)
        return {"released": True, "model": ended.model, "leases": self._leases.held(ended.model)}

    def release_owner(self, owner: int) -> int:
        """A connection closed: its leases end at once; how many."""
        ended = self._leases.release_owner(owner)
        if ended:
            log.info("lease.connection_closed", owner=owner, released=ended)
        return ended

    async def restart(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """Stop `name` if it runs (once its requests in flight have ended), wait for its
        memory, and start it again."""
        record = self._life.record(name, managed=True)
        async with self._no_requests(name, force=False):
            result = await self._switcher.load(
                "restart", record, caller, evict=False, wait=wait, timeout=timeout, restart=True
            )
        return {**result, "status": "restarted"}

    async def preload(self) -> dict[str, str]:
        """Start the configured `preload` models in order, each only if it fits without
        stopping anything; what became of each (never raises: the daemon serves on)."""
        outcome: dict[str, str] = {}
        for name in self._life.config.daemon.preload:
            try:
                result = await self.start(name, caller={"preload": 1})
                outcome[name] = result.get("state") or result["status"]
            except ModeldError as exc:
                outcome[name] = exc.data["error"]
                log.warning("preload.skipped", model=name, error=exc.message)
        log.info("preload.done", outcome=outcome)
        return outcome

    async def reload(self, *, caller: Caller | None = None) -> dict[str, Any]:
        """Re-read the config file and apply it; an invalid one changes nothing."""
        return await self._reloader.reload(caller)

    def _daemon_settings(self) -> DaemonConfig:
        return self._life.config.daemon
