"""The Supervisor: the one owner of model state.

Operations (switch, start, stop, restart) are served one at a time under one
asyncio.Lock. State changes only through `_transition`, over the table in
`states.py`. Transitions are synchronous (no await inside), so the load watchers
and what the monitor (monitor.py) reports between operations are applied
atomically on the event loop; each checks the record's generation first so that
an observation made before another change is dropped instead of applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from modeld.activity import Activity, last_active
from modeld.config import Config, DaemonConfig, check_devices, load_config
from modeld.errors import (
    ConfigError,
    GpuUnavailable,
    InsufficientMemory,
    LoadFailed,
    ModeldError,
    OperationFailed,
    OperationTimeout,
    RuntimeUnavailable,
    SleepModeFailed,
    UnknownModel,
)
from modeld.events import EventBus, Subscription
from modeld.gpu.base import GpuMonitor, GpuReading
from modeld.hfcache import Download
from modeld.jsonraw import RawJSON
from modeld.ledger import GpuLedger
from modeld.memory import model_need
from modeld.metrics import MetricsSink, NoMetrics
from modeld.monitor import Monitor
from modeld.planner import Infeasible, Plan
from modeld.readiness import await_ready
from modeld.record import ModelRecord
from modeld.reload import ReloadPlan, plan_reload
from modeld.restart import GiveUp, decide_restart
from modeld.runtime.base import BackendState, BackendStatus, Runtime
from modeld.states import Failure, ModelStatus, State, check_transition
from modeld.store import (
    Learned,
    Store,
    learned_peak,
    learned_residual,
    remember_load,
    remember_peak,
    remember_residual,
    remember_wake,
)
from modeld.views import held_memory, model_view, models_view, runtime_view
from modeld.vllm import Health, VllmClient

log = structlog.get_logger("modeld.supervisor")

Caller = Mapping[str, int]
AUTO_RESTART = "auto_restart"
IDLE_UNLOAD = "idle_unload"
# Operations that only a model still in the config may take (stop works on any).
MANAGED_ONLY = frozenset({"switch", "start", "restart", AUTO_RESTART})
STATUS_MAX_AGE_S = 0.5
# cost_aware: at each request every model's demand decays by this factor, so favourites
# that stop being asked for stop being protected within a few dozen requests.
DEMAND_DECAY = 0.95
# Measured use beyond the configured need by more than this is reported.
OVER_PLAN_TOLERANCE_GB = 0.5
# A parked model may keep more than planned: plan again after parking, at most this often.
PLAN_ROUNDS = 3


class Supervisor:
    """Owns every model's state and serves operations on them one at a time."""

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
        self._config = config
        self._metrics = metrics or NoMetrics()
        self._config_path = config_path
        self._store = store or Store(config.daemon.state_dir)
        self._learned = Learned()
        self._ledger = GpuLedger(gpu, config, host_ram)
        self._runtimes = dict(runtimes)
        self._vllm = vllm or VllmClient()
        self._lock = asyncio.Lock()
        self._models = {
            name: ModelRecord(model, ModelStatus(State.STOPPED, time.time()))
            for name, model in config.models.items()
        }
        self._runtime_errors: dict[str, str | None] = {name: None for name in self._runtimes}
        self._changed = asyncio.Event()
        self._monitor = Monitor(self, self._ledger, self._vllm, self._daemon_settings)
        self._monitoring: asyncio.Task[None] | None = None
        self._saving: asyncio.Task[None] | None = None
        self._events = EventBus()
        self._busy = 0
        # What the cached status was built from; see status().
        self._revision = 0
        self._status_key: tuple[Any, ...] | None = None
        self._status_at = 0.0
        self._status: dict[str, Any] = {}
        self._status_json = RawJSON(b"{}")
        self._status_redacted: RawJSON | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def startup(self) -> None:
        """Read the GPU, check every model's devices exist, find what already runs."""
        reading = await self._ledger.read(self._models.values())
        check_devices(self._config.models, {d.index for d in reading.devices})
        self._learned = await asyncio.to_thread(self._store.load)
        for record in self._models.values():
            if learned := self._learned.models.get(record.name):
                record.learned_load_s = learned.typical_load_s()
                record.learned_wake_s = learned.typical_wake_s()
                record.learned_gb = learned_peak(learned, record.config)
                record.residual_gb = learned_residual(learned, record.config)
            await self._find_running(record)
        await self.poll_once()
        self._monitoring = asyncio.create_task(self._monitor.run(), name="modeld-monitor")

    async def _find_running(self, record: ModelRecord) -> None:
        try:
            backend = await self._runtime(record).inspect(record.config)
        except RuntimeUnavailable as exc:
            self.seen_runtime(record.config.runtime, exc.message)
            return
        except ModeldError as exc:
            log.warning("startup.not_adopted", model=record.name, reason=exc.message)
            return
        if backend.state is BackendState.RUNNING:
            # Found running: watch it to health instead of restarting it.
            record.backend = backend
            self._begin_loading(record, "found running at startup")

    async def shutdown(self) -> None:
        """Stop watching; models in containers keep running, process children are stopped."""
        records = list(self._models.values())
        pending: list[asyncio.Task[Any] | None] = [self._monitoring]
        pending += [task for r in records for task in (r.load, r.restart_task, r.unload_task)]
        tasks = [t for t in pending if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._saving is not None:
            await asyncio.wait({self._saving})  # learned figures are not lost at exit
        for runtime in self._runtimes.values():
            await runtime.close()
        await self._ledger.close()
        await self._vllm.close()

    # ---- queries: answered from memory -----------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every model's state in the seed's fields, and the GPU block (do not modify it).

        Built from memory, and rebuilt only when something it shows has changed: callers
        may ask thousands of times a second.
        """
        self._refresh_status()
        return self._status

    def status_json(self, redacted: bool = False) -> RawJSON:
        """`status`, serialized once per change; `redacted`: without the lines backends
        printed (for callers who may not read logs)."""
        self._refresh_status()
        if not redacted:
            return self._status_json
        if self._status_redacted is None:
            view = {**self._status, "models": _without_lines(self._status["models"])}
            self._status_redacted = RawJSON(json.dumps(view, separators=(",", ":")).encode())
        return self._status_redacted

    def _refresh_status(self) -> None:
        key = (ModelRecord.revision, self._revision, id(self._ledger.reading), self._ledger.error)
        now = time.monotonic()
        # The age limit is a safety net for any change that bumps no revision.
        if key == self._status_key and now - self._status_at < STATUS_MAX_AGE_S:
            return
        self._status = self._build_status()
        self._status_json = RawJSON(json.dumps(self._status, separators=(",", ":")).encode())
        self._status_redacted = None
        self._status_key, self._status_at = key, now

    def _build_status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "models": {
                name: model_view(r, self._ledger.reading, now) for name, r in self._models.items()
            },
            "gpu": self.gpu(),
            "parking": {
                "ram_budget_gb": self._config.daemon.park_ram_gb,
                "ram_used_gb": round(self._ledger.ram_parked_gb(self._models.values()), 1),
                # What the next park may take: the budget's rest, within the host's spare.
                "ram_free_gb": round(max(0.0, self._ledger.ram_free_gb(self._models.values())), 1),
            },
            "runtimes": runtime_view(self._runtime_errors),
            "eviction_policy": self._config.daemon.eviction_policy,
            "busy": self._busy > 0,
            "in_flight": self._busy,
            "subscribers": self._events.count,
        }

    def gpu(self) -> dict[str, Any]:
        """The last GPU reading in the seed's shape, with devices and freshness."""
        return self._ledger.view()

    def models(self) -> list[dict[str, Any]]:
        """The configured models."""
        return models_view(self._models.values(), self._ledger.reading)

    def summary(self) -> str:
        """One line for `systemctl status`: e.g. "2 running, 1 loading · 41.3 GB free"."""
        counts = Counter(r.state for r in self._models.values())
        shown_states = (State.RUNNING, State.LOADING, State.SLEEPING, State.FAILED)
        parts = [f"{counts[s]} {s.value}" for s in shown_states]
        shown = ", ".join(p for p in parts if not p.startswith("0 ")) or "none running"
        return f"{shown} · {self._ledger.view()['available_gb']:.1f} GB free"

    async def changed(self) -> None:
        """Return at the next state transition."""
        await self._changed.wait()

    def subscribe(self) -> Subscription:
        """Events from now on: state changes and switch progress."""
        self._revision += 1
        return self._events.subscribe()

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription."""
        self._revision += 1
        self._events.unsubscribe(subscription)

    async def logs(self, name: str, lines: int) -> dict[str, Any]:
        """A model's backend's last output lines (Docker logs or captured output)."""
        record = self._record(name)
        return {"model": name, "lines": await self._runtime(record).logs(record.config, lines)}

    def state_of(self, name: str) -> State:
        """A model's current state."""
        return self._record(name).state

    async def wait_for_state(self, name: str, states: set[State], timeout: float) -> State:
        """Return once `name` is in one of `states`; TimeoutError after `timeout`."""
        record = self._record(name)
        async with asyncio.timeout(timeout):
            while record.state not in states:
                await self._changed.wait()
        return record.state

    # ---- operations: one at a time ---------------------------------------------------

    async def switch(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """Make `name` the model that answers: stop what must go, start it, wait for health."""
        record = self._record(name, managed=True)
        started, outcome = time.monotonic(), "error"
        try:
            result = await self._load(
                "switch", record, caller, evict=True, wait=wait, timeout=timeout
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
        record = self._record(name, managed=True)
        return await self._load("start", record, caller, evict=False, wait=wait, timeout=timeout)

    async def stop(self, name: str, *, caller: Caller | None = None) -> dict[str, Any]:
        """Stop `name`'s backend; stopping a stopped model is not an error."""
        record = self._record(name)
        async with self._operation("stop", record, caller):
            if record.state is State.STOPPED:
                return {"status": "already_stopped", "model": name}
            await self._check_runtime(record)
            await self._stop_model(record, "requested")
            return {"status": "stopped", "model": name}

    async def restart(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """Stop `name` if it runs, wait for its memory, and start it again."""
        record = self._record(name, managed=True)
        result = await self._load(
            "restart", record, caller, evict=False, wait=wait, timeout=timeout, restart=True
        )
        return {**result, "status": "restarted"}

    async def _load(
        self,
        op: str,
        record: ModelRecord,
        caller: Caller | None,
        *,
        evict: bool,
        wait: bool,
        timeout: float | None,
        restart: bool = False,
    ) -> dict[str, Any]:
        """Decide, make room and start under the lock; wait for health outside it, so
        other operations never queue behind an unrelated load. When loads in flight hold
        the memory the target needs, wait (outside the lock) for them to settle and plan
        again: a loading model is never evicted from under its waiting callers."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            async with self._operation(op, record, caller):
                if restart:
                    await self._check_runtime(record)
                    if record.state is not State.STOPPED:
                        await self._stop_model(record, "restart")
                        await self._ledger.wait_for_room(record, self._models.values())
                    restart = False
                try:
                    begun = await self._bring_up(record, evict=evict)
                except _LoadsInTheWay as blocked:
                    loads = blocked.loads
                else:
                    break
            await self._settle(record, loads, deadline)
        with self._counted():
            return await self._finish(begun, wait, _left(deadline))

    async def _settle(
        self, record: ModelRecord, loads: list[asyncio.Task[Any]], deadline: float | None
    ) -> None:
        """Wait for one of the loads in the way to end (the caller's deadline applies)."""
        with self._counted():
            done, _ = await asyncio.wait(
                [asyncio.shield(load) for load in loads],
                timeout=_left(deadline),
                return_when=asyncio.FIRST_COMPLETED,
            )
        if not done:
            raise OperationTimeout(
                f"{record.name}: still waiting for other models' loads to end after the "
                "timeout; nothing was changed for it",
                model=record.name,
                state=record.state.value,
            )

    @contextlib.contextmanager
    def _counted(self) -> Any:
        """A caller waiting outside the lock is in flight too."""
        self._busy += 1
        self._revision += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._revision += 1

    async def preload(self) -> dict[str, str]:
        """Start the configured `preload` models in order, each only if it fits without
        stopping anything; what became of each (never raises: the daemon serves on)."""
        outcome: dict[str, str] = {}
        for name in self._config.daemon.preload:
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
        if self._config_path is None:
            raise ConfigError("modeld was started without a config file: nothing to reload")
        new = await asyncio.to_thread(load_config, self._config_path)
        async with self._operation("reload", None, caller):
            idle = {n for n, r in self._models.items() if r.state is State.STOPPED}
            plan = plan_reload(self._config, new, idle)
            self._check_reloadable(plan)
            for name in plan.added:
                self._models[name] = ModelRecord(
                    plan.config.models[name], ModelStatus(State.STOPPED, time.time())
                )
            for name in plan.removed:
                del self._models[name]
            for name in plan.unmanaged:
                self._models[name].unmanaged = True
            for name, model in plan.config.models.items():
                record = self._models[name]
                record.unmanaged = False
                if name in plan.changed_now:
                    record.config = model
                    record.learned_gb = learned_peak(self._learned.models.get(name), model)
                elif name in plan.changed_at_next_start:
                    record.pending_config = model
            self._config = plan.config
            self._ledger.config = plan.config
            self._revision += 1
            outcome = {
                "status": "reloaded",
                "added": list(plan.added),
                "removed": list(plan.removed),
                "unmanaged": list(plan.unmanaged),
                "changed": list(plan.changed_now),
                "changed_at_next_start": list(plan.changed_at_next_start),
                "requires_restart": list(plan.requires_restart),
            }
            log.info("config.reloaded", path=str(self._config_path), **outcome)
            return outcome

    def _check_reloadable(self, plan: ReloadPlan) -> None:
        """Refuse a config whose models need a runtime or a GPU this daemon does not have."""
        for name, model in plan.config.models.items():
            if model.runtime not in self._runtimes:
                raise ConfigError(
                    f"models.{name}.runtime: the {model.runtime} runtime is not running in "
                    "this daemon; restart modeld to add it",
                    fields=[f"models.{name}.runtime"],
                )
        if self._ledger.reading:
            check_devices(plan.config.models, {d.index for d in self._ledger.reading.devices})

    @contextlib.asynccontextmanager
    async def _operation(self, op: str, record: ModelRecord | None, caller: Caller | None) -> Any:
        model = record.name if record else None
        log.info("operation.requested", op=op, model=model, caller=dict(caller or {}))
        if record is not None and op != AUTO_RESTART:
            # An operator acting on the model takes over from the restart policy.
            self._cancel_restart(record)
        # Counted from the moment it asks: waiting for its turn is being in flight too.
        self._busy += 1
        self._revision += 1
        try:
            async with self._lock:
                started = time.monotonic()
                try:
                    if record is not None:
                        self._still_configured(record, op)
                    yield
                except ModeldError as exc:
                    log.warning(
                        "operation.failed",
                        op=op,
                        model=model,
                        error=exc.data["error"],
                        message=exc.message,
                        caller=dict(caller or {}),
                    )
                    raise
                log.info(
                    "operation.done",
                    op=op,
                    model=model,
                    caller=dict(caller or {}),
                    seconds=round(time.monotonic() - started, 3),
                )
        finally:
            self._busy -= 1
            self._revision += 1

    async def _bring_up(self, record: ModelRecord, *, evict: bool) -> _Begun:
        """Under the lock: plan, stop or park what must go, start (or begin waking) the
        target. Returns what the caller waits on, outside the lock."""
        if record.state is State.RUNNING:
            self._count_demand(record)
            record.last_active = time.monotonic()
            return _Begun(
                record,
                {
                    "status": "already_loaded",
                    "model": record.name,
                    "message": f"Model '{record.name}' is already running and healthy",
                },
            )
        if record.state is State.LOADING:
            # Already on its way: wait for that load, never start a second backend.
            self._count_demand(record)
            return _Begun(record, _success(record, [], None), load=record.load)
        await self._check_runtime(record)
        if record.state is State.FAILED:
            # A failed backend may linger (vLLM's API server outlives its dead engine):
            # stop it first, so its memory is not counted twice.
            await self._stop_model(record, "clearing failed backend before start")
        reading = await self._ledger.read(self._models.values())
        plan = self._ledger.plan(record, self._models.values(), reading)
        if isinstance(plan, Infeasible):
            loads = [
                r.load
                for r in self._models.values()
                if r is not record and r.state is State.LOADING and r.load is not None
            ]
            if loads:
                raise _LoadsInTheWay(loads)
            raise self._insufficient(record, plan)
        self._count_demand(record)
        memory_info = {
            "required_gb": round(plan.required_gb, 1),
            "available_before_gb": round(plan.available_before_gb, 1),
            "freed_gb": round(plan.freed_gb, 1),
            "device": plan.device,
            "source": self._ledger.need(record).source.value,
            "per_device": {
                str(d): {k: round(v, 1) for k, v in figures.items()}
                for d, figures in plan.per_device.items()
            },
        }
        if (plan.stop or plan.park) and not evict:
            touched = ", ".join([*plan.stop, *plan.park])
            raise InsufficientMemory(
                f"Not enough free GPU memory to start {record.name} without stopping "
                f"{touched}; use switch to let modeld stop them",
                model=record.name,
                would_stop=list(plan.stop),
                would_park=list(plan.park),
                **memory_info,
            )
        log.info(
            "switch.plan",
            model=record.name,
            stop=list(plan.stop),
            park=list(plan.park),
            **memory_info,
        )
        self._events.publish(
            "switch.plan",
            model=record.name,
            stop=list(plan.stop),
            park=list(plan.park),
            memory_info=memory_info,
        )
        stopped, parked = await self._make_room(record, plan)
        moved = [*stopped, *parked]
        begun = _Begun(record, _success(record, moved, memory_info), moved=moved)
        begun.result["parked_models"] = parked
        try:
            # Start only once the driver shows the room (at once when nothing was stopped).
            await self._ledger.wait_for_room(record, self._models.values())
            if moved:
                self._events.publish(
                    "switch.room_ready", model=record.name, free_gb=self._ledger.free_gb()
                )
                log.info(
                    "switch.room_ready",
                    model=record.name,
                    stopped=stopped,
                    parked=parked,
                    free_gb=self._ledger.free_gb(),
                )
            if record.state is State.SLEEPING:
                self._begin_wake(record)
                begun.waking = True
            else:
                await self._start_model(record)
        except ModeldError as failure:
            begun.failure = failure  # the caller rolls back, outside the lock
        begun.load = record.load
        return begun

    def _count_demand(self, record: ModelRecord) -> None:
        """cost_aware's demand: each request decays everyone's, and counts for its model."""
        record.last_used = time.time()
        for other in self._models.values():
            other.demand *= DEMAND_DECAY
        record.demand += 1.0

    async def _finish(self, begun: _Begun, wait: bool, timeout: float | None) -> dict[str, Any]:
        """Outside the lock: wait for the load begun (or joined), roll back on failure."""
        record, result = begun.record, begun.result
        if result["status"] == "already_loaded":
            return result
        failure = begun.failure
        if failure is None and wait and begun.load is not None:
            failure = await _wait_load(record, begun.load, timeout)
        if failure is not None:
            # A failed switch should not leave users with nothing: bring back what it
            # stopped. A caller's own timeout is not a failure: the load goes on.
            rollback = begun.moved and self._config.daemon.rollback_on_failure
            if rollback and record.state is State.FAILED:
                failure.data.update(await self._restore(tuple(begun.moved), record.name))
            raise failure
        if begun.waking and wait:
            result.update(
                woke=record.wake_fallback is None,
                wake_seconds=round(record.last_wake_s, 2) if record.last_wake_s else None,
                wake_fallback=record.wake_fallback,
            )
        result["state"] = record.state.value
        result["health"] = record.health.value
        # A woken model did not load: its wake time is in wake_seconds.
        loaded = None if result.get("woke") else record.last_load_s
        result["load_seconds"] = round(loaded, 2) if loaded else None
        return result

    async def _make_room(self, record: ModelRecord, plan: Plan) -> tuple[list[str], list[str]]:
        """Carry out a plan: stops first (they may give back host RAM the parks need), then
        parks. A parked model may keep more than planned: plan again, a few times at most."""
        stopped: list[str] = []
        parked: list[str] = []
        for _ in range(PLAN_ROUNDS):
            for name in plan.stop:
                await self._stop_model(self._models[name], f"evicted for {record.name}")
                self._metrics.evicted(name)
                stopped.append(name)
                self._events.publish("switch.stopped", model=record.name, stopped=name)
            for name in plan.park:
                self._metrics.evicted(name)
                if await self._park(self._models[name], f"parked for {record.name}"):
                    parked.append(name)
                    self._events.publish("switch.parked", model=record.name, parked=name)
                else:
                    stopped.append(name)
                    self._events.publish("switch.stopped", model=record.name, stopped=name)
            if not plan.park:
                break
            reading = await self._ledger.read(self._models.values())
            replanned = self._ledger.plan(record, self._models.values(), reading)
            if isinstance(replanned, Infeasible):
                raise self._insufficient(record, replanned)
            if not (replanned.stop or replanned.park):
                break
            log.info(
                "switch.replan",
                model=record.name,
                stop=list(replanned.stop),
                park=list(replanned.park),
                why="a parked model kept more memory than planned",
            )
            plan = replanned
        return stopped, parked

    async def _park(self, record: ModelRecord, reason: str) -> bool:
        """Park a running model with vLLM's sleep mode (weights to host RAM); stop it if the
        backend will not sleep. True if it was parked."""
        endpoint = record.config.endpoint
        try:
            await self._vllm.sleep(endpoint, record.config.stop_timeout_s)
            if not await self._vllm.is_sleeping(endpoint):
                raise SleepModeFailed("/sleep answered 200 but /is_sleeping says it is awake")
        except SleepModeFailed as exc:
            log.warning("park.failed", model=record.name, error=exc.message, fallback="stop")
            self._events.publish("park.failed", model=record.name, error=exc.message)
            await self._stop_model(record, f"{reason}; parking failed: {exc.message}")
            return False
        if record.state is State.RUNNING:  # the monitor may have seen it asleep already
            self._transition(record, State.SLEEPING, reason)
        self._metrics.parked(record.name)
        # What it keeps is measured, never assumed: plans count on it from now on.
        with contextlib.suppress(GpuUnavailable):
            reading = await self._ledger.read(self._models.values())
            if measured := reading.per_model.get(record.name):
                record.residual_gb = dict(measured)
                remember_residual(self._learned, record.config, dict(measured))
                self._save_learned()
        return True

    def _begin_wake(self, record: ModelRecord) -> None:
        """Begin waking a parked model: it is `loading` until the wake task ends."""
        self._transition(record, State.LOADING, "wake")
        record.loading_started = time.monotonic()
        self._events.publish("switch.waking", model=record.name)
        record.load = asyncio.create_task(self._wake_load(record), name=f"wake-{record.name}")

    async def _wake_load(self, record: ModelRecord) -> ModeldError | None:
        """Wake (POST /wake_up, then /is_sleeping false and /health 200), outside the
        lock; if it will not wake, stop it and cold-start it instead (under the lock), and
        say why. The outcome, like a load's: None, or the error."""
        config = record.config
        started = time.monotonic()
        generation = record.generation
        try:
            await self._vllm.wake_up(config.endpoint, config.wake_timeout_s)
            if await self._vllm.is_sleeping(config.endpoint):
                raise SleepModeFailed("/wake_up answered 200 but /is_sleeping says it sleeps")
            health = await self._vllm.health(config.endpoint)
            record.health = health
            if health is not Health.HEALTHY:
                raise SleepModeFailed(f"/health says {health.value} after waking")
        except SleepModeFailed as exc:
            return await self._cold_start_instead(record, generation, exc)
        if record.generation != generation:
            return LoadFailed(f"{record.name}: changed while waking", model=record.name)
        record.load = None
        record.wake_fallback = None
        record.last_wake_s = time.monotonic() - started
        self._metrics.woke(record.name, record.last_wake_s)
        remember_wake(self._learned, record.name, record.last_wake_s)
        record.learned_wake_s = self._learned.models[record.name].typical_wake_s()
        self._save_learned()
        record.running_since = time.monotonic()
        self._transition(record, State.RUNNING, "woke")
        # Its weights are back on the GPU: refresh what `status` shows.
        with contextlib.suppress(GpuUnavailable):
            self._learn_memory(await self._ledger.read(self._models.values()))
        return None

    async def _cold_start_instead(
        self, record: ModelRecord, generation: int, exc: SleepModeFailed
    ) -> ModeldError | None:
        record.wake_fallback = exc.message
        log.warning("wake.failed", model=record.name, error=exc.message, fallback="cold start")
        self._events.publish(
            "wake.failed", model=record.name, error=exc.message, fallback="cold start"
        )
        self._metrics.woke(record.name, None)
        async with self._lock:
            if record.generation != generation:
                return LoadFailed(f"{record.name}: changed while waking", model=record.name)
            record.load = None  # this task is no longer the load a stop would cancel
            try:
                await self._stop_model(record, f"wake failed: {exc.message}; cold start instead")
                await self._ledger.wait_for_room(record, self._models.values())
                await self._start_model(record)
            except ModeldError as failure:
                return failure
        load = record.load
        return await asyncio.shield(load) if load is not None else None

    async def _restore(self, names: tuple[str, ...], failed: str) -> dict[str, Any]:
        """Start again the models a failed switch stopped; say which came back."""
        restored: list[str] = []
        not_restored: dict[str, str] = {}
        for name in names:
            victim = self._models[name]
            try:
                async with self._operation("rollback", victim, None):
                    await self._ledger.wait_for_room(victim, self._models.values())
                    if victim.state is State.SLEEPING:
                        self._begin_wake(victim)
                    elif victim.state in (State.STOPPED, State.FAILED):
                        await self._start_model(victim)
                if victim.load is not None and (failure := await asyncio.shield(victim.load)):
                    raise failure
            except ModeldError as exc:
                not_restored[name] = exc.message
            else:
                restored.append(name)
        log.info("switch.rolled_back", model=failed, restored=restored, not_restored=not_restored)
        return {"restored": restored, "not_restored": not_restored}

    def _insufficient(self, record: ModelRecord, plan: Infeasible) -> InsufficientMemory:
        return InsufficientMemory(
            f"Cannot free enough GPU memory to load {record.name} on GPU {plan.device}. "
            f"Required: {plan.required_gb:.1f}GB, Available after unloading all models: "
            f"{plan.total_available_gb:.1f}GB",
            model=record.name,
            device=plan.device,
            required_gb=round(plan.required_gb, 1),
            available_gb=round(plan.available_gb, 1),
            freed_gb=round(plan.freed_gb, 1),
            total_available_gb=round(plan.total_available_gb, 1),
            pinned_blocking=list(plan.blocked_by),
        )

    # ---- state changes ---------------------------------------------------------------

    def _transition(
        self, record: ModelRecord, new: State, reason: str, failure: Failure | None = None
    ) -> None:
        """The one place a model's state changes: validate, stamp, log, wake waiters."""
        old = record.state
        check_transition(old, new)
        record.status = ModelStatus(new, time.time(), failure)
        record.generation += 1
        if new is State.RUNNING:
            # The idle clock starts when it answers; activity is read afresh from here.
            record.last_active, record.activity = time.monotonic(), None
        fields: dict[str, Any] = {
            "model": record.name,
            "from_state": old.value,
            "to_state": new.value,
            "reason": reason,
        }
        if failure is not None:
            fields.update(failure=failure.reason, exit_code=failure.exit_code)
        log.info("model.transition", **fields)
        self._events.publish("state", **fields)
        if new is State.FAILED:
            self._metrics.failed(record.name)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _begin_loading(self, record: ModelRecord, reason: str) -> None:
        """Watch a backend modeld did not start (found running, or awake again) to health;
        how long that takes says nothing about how long a load takes."""
        self._transition(record, State.LOADING, reason)
        record.loading_started = time.monotonic()
        record.load = asyncio.create_task(
            self._watch_load(record, timed=False), name=f"load-{record.name}"
        )

    async def _start_model(self, record: ModelRecord) -> None:
        if record.pending_config is not None:
            record.config, record.pending_config = record.pending_config, None
            record.learned_gb = learned_peak(self._learned.models.get(record.name), record.config)
        record.over_plan_gb = None
        record.releasing_gb = None
        runtime = self._runtime(record)
        self._transition(record, State.LOADING, "start")
        record.loading_started = time.monotonic()
        record.health = Health.UNKNOWN
        try:
            record.backend = await runtime.start(record.config)
        except ModeldError as exc:
            self._transition(record, State.FAILED, "start failed", Failure(exc.message))
            raise
        except Exception as exc:
            # Whatever goes wrong, the model must not be left `loading` with no load.
            log.exception("runtime.start_crashed", model=record.name)
            self._transition(record, State.FAILED, "start failed", Failure(repr(exc)))
            raise LoadFailed(
                f"{record.name}: start failed: {exc!r}", model=record.name, reason=repr(exc)
            ) from exc
        record.load = asyncio.create_task(
            self._watch_load(record, timed=True), name=f"load-{record.name}"
        )

    async def _stop_model(self, record: ModelRecord, reason: str) -> None:
        if record.load is not None and not record.load.done():
            record.load.cancel()
            await asyncio.wait({record.load})
        record.load = None
        if record.state is State.STOPPED:
            return
        self._transition(record, State.STOPPING, reason)
        reading = self._ledger.reading
        if reading is not None:
            held, _ = held_memory(record, reading)
            record.releasing_gb = held
            record.releasing_base = self._ledger.unattributed(reading)
            record.releasing_until = time.monotonic() + self._config.daemon.memory_release_timeout_s
        try:
            await self._runtime(record).stop(record.config)
        except Exception as exc:
            # Never left `stopping`: a stop that failed, for any reason, says so.
            if not isinstance(exc, ModeldError):
                log.exception("runtime.stop_crashed", model=record.name)
                exc = OperationFailed(
                    f"{record.name}: stop failed: {exc!r}", model=record.name, reason=repr(exc)
                )
            self._transition(
                record, State.FAILED, "stop failed", Failure(f"stop failed: {exc.message}")
            )
            raise exc from None
        record.health = Health.UNKNOWN
        record.backend = None
        self._transition(record, State.STOPPED, reason)
        if record.pending_config is not None:
            record.config, record.pending_config = record.pending_config, None
        if record.unmanaged:
            # Removed from the config by a reload: once stopped, it is forgotten.
            del self._models[record.name]
            log.info("model.forgotten", model=record.name)

    async def _watch_load(self, record: ModelRecord, timed: bool) -> ModeldError | None:
        """Race health against the backend's exit and the load deadline; record the outcome,
        and (`timed`: a load modeld started) how long it took."""
        started = record.loading_started or time.monotonic()
        try:
            await await_ready(
                record.config,
                self._runtime(record),
                self._vllm,
                self._config.daemon.health_poll_interval_s,
                lambda health: setattr(record, "health", health),
            )
        except Exception as exc:
            failure = exc if isinstance(exc, ModeldError) else _crashed(record, exc)
            # Nothing half-loaded may keep GPU memory: stop it (a no-op once it exited).
            try:
                await self._runtime(record).stop(record.config)
            except Exception:
                log.exception("load.stop_after_failure_failed", model=record.name)
            record.load = None
            self._transition(
                record,
                State.FAILED,
                "load failed",
                Failure(
                    failure.message,
                    failure.data.get("exit_code"),
                    tuple(failure.data.get("last_lines", ())),
                ),
            )
            return failure
        load_s = time.monotonic() - started
        if await self._vllm.says_asleep(record.config):
            # Found at startup (or woken and parked again behind modeld's back) asleep.
            record.load = None
            self._transition(record, State.SLEEPING, "found asleep")
            return None
        if timed:
            record.last_load_s = load_s
            self._metrics.load_done(record.name, load_s)
        record.load = None
        record.running_since = time.monotonic()
        self._transition(record, State.RUNNING, "healthy")
        # Its memory is now what the driver measures: refresh what `status` shows.
        with contextlib.suppress(GpuUnavailable):
            self._learn_memory(await self._ledger.read(self._models.values()))
        if timed:
            remember_load(self._learned, record.name, load_s)
            record.learned_load_s = self._learned.models[record.name].typical_load_s()
            self._save_learned()
        return None

    def _learn_memory(self, reading: GpuReading) -> None:
        """Remember each running model's peak measured memory; report one that has grown
        past what its configuration promised (the plan was built on that figure)."""
        totals = {d.index: d.total_gb for d in reading.devices}
        grew = False
        for record in self._models.values():
            measured = reading.per_model.get(record.name)
            if record.state is not State.RUNNING or not measured:
                continue
            if not all(gpu in measured for gpu in record.config.gpus):
                continue
            if remember_peak(self._learned, record.config, dict(measured)):
                grew = True
                record.learned_gb = learned_peak(
                    self._learned.models.get(record.name), record.config
                )
            planned = model_need(record.config, totals)
            over = sum(measured.values()) - planned.total_gb
            if over > OVER_PLAN_TOLERANCE_GB and record.over_plan_gb is None:
                record.over_plan_gb = round(over, 2)
                log.warning(
                    "memory.over_plan",
                    model=record.name,
                    planned_gb=planned.total_gb,
                    planned_source=planned.source.value,
                    measured_gb=round(sum(measured.values()), 2),
                )
        if grew:
            self._save_learned()

    def _save_learned(self) -> None:
        """Write the learned figures in the background: a waiting caller need not wait for
        an fsync. Saves run one after another, each a snapshot, so the last one wins."""
        snapshot = self._learned.model_copy(deep=True)
        previous = self._saving

        async def save() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await asyncio.to_thread(self._store.save, snapshot)

        self._saving = asyncio.create_task(save(), name="save-learned")

    # ---- restart = "on-failure" -------------------------------------------------------

    def _schedule_restart(self, record: ModelRecord) -> None:
        """After a model that ran has died: start it again later, if its policy says so."""
        ran_for = time.monotonic() - (record.running_since or time.monotonic())
        decision = decide_restart(record.config, record.restart_attempts, ran_for)
        if decision is None:
            return
        if isinstance(decision, GiveUp):
            record.restart_attempts = decision.attempts
            record.restart_gave_up = True
            record.restart_at = None
            log.warning("restart.gave_up", model=record.name, attempts=decision.attempts)
            return
        record.restart_attempts = decision.attempt
        record.restart_at = time.time() + decision.delay_s
        log.info(
            "restart.scheduled",
            model=record.name,
            attempt=decision.attempt,
            delay_s=decision.delay_s,
        )
        record.restart_task = asyncio.create_task(
            self._auto_restart(record, decision.delay_s), name=f"restart-{record.name}"
        )

    async def _auto_restart(self, record: ModelRecord, delay: float) -> None:
        await asyncio.sleep(delay)
        record.restart_task = None
        record.restart_at = None
        try:
            async with self._operation(AUTO_RESTART, record, None):
                # An operator's own operation cancels a pending restart before it gets
                # here; a model found running again (re-adopted) needs none.
                if record.state not in (State.FAILED, State.STOPPED):
                    return
                begun = await self._bring_up(record, evict=False)
            with self._counted():
                await self._finish(begun, wait=True, timeout=None)
        except UnknownModel:
            return  # removed by a reload meanwhile
        except (ModeldError, _LoadsInTheWay):
            # A failed retry is one more failure; the policy decides whether to go on.
            record.running_since = None
            self._schedule_restart(record)

    def _cancel_restart(self, record: ModelRecord) -> None:
        if record.restart_task is not None:
            record.restart_task.cancel()
            record.restart_task = None
        record.restart_attempts = 0
        record.restart_at = None
        record.restart_gave_up = False

    # ---- what the monitor saw (modeld/monitor.py): applied here, if still current ------

    async def poll_once(self) -> None:
        """One monitor pass now: GPU, each model's backend and health, downloads."""
        await self._monitor.poll_once()

    def records(self) -> list[ModelRecord]:
        """Every model's record (for the monitor, which reads them and never writes)."""
        return list(self._models.values())

    def runtime_for(self, record: ModelRecord) -> Runtime:
        """The runtime a model's backend runs in."""
        return self._runtimes[record.config.runtime]

    def seen_runtime(self, kind: str, error: str | None) -> None:
        """A runtime answered (error None) or did not: shown in `status`."""
        if self._runtime_errors.get(kind) != error:
            self._runtime_errors[kind] = error
            self._revision += 1

    def seen_memory(self, reading: GpuReading) -> None:
        """A fresh GPU reading: learn running models' peaks."""
        self._learn_memory(reading)

    def seen_exit(
        self, record: ModelRecord, generation: int, exit_code: int | None, lines: list[str]
    ) -> None:
        """A running or parked model's backend is gone: any exit modeld did not ask for is
        a failure."""
        if record.generation != generation:
            return
        record.backend = None
        record.health = Health.UNKNOWN
        self._transition(
            record,
            State.FAILED,
            "backend exited",
            Failure(
                f"backend exited with code {exit_code} without modeld asking",
                exit_code,
                tuple(lines),
            ),
        )
        self._schedule_restart(record)

    def seen_health(self, record: ModelRecord, generation: int, health: Health) -> None:
        """What /health said; 503 means vLLM's engine died."""
        if record.generation != generation:
            return
        record.health = health
        if health is Health.DEAD:
            self._transition(
                record,
                State.FAILED,
                "engine died",
                Failure("/health answered 503: the engine died"),
            )
            self._schedule_restart(record)

    def seen_asleep(self, record: ModelRecord, generation: int, asleep: bool) -> None:
        """A model parked or woken behind modeld's back."""
        if record.generation != generation:
            return
        if asleep and record.state is State.RUNNING:
            self._transition(record, State.SLEEPING, "found asleep")
        elif not asleep and record.state is State.SLEEPING:
            self._begin_loading(record, "found awake")

    def seen_running(self, record: ModelRecord, generation: int, backend: BackendStatus) -> None:
        """A stopped or failed model's backend runs: watch it to health."""
        if record.generation != generation or record.state not in (State.STOPPED, State.FAILED):
            return
        record.backend = backend
        self._begin_loading(record, "backend found running")

    def seen_activity(
        self, record: ModelRecord, generation: int, activity: Activity | None
    ) -> None:
        """A running model's request metrics: unload it once idle_unload_after_s passed
        with no request finished, none in flight and none queued."""
        idle_after = record.config.idle_unload_after_s
        if record.generation != generation or idle_after is None:
            return
        now = time.monotonic()
        record.last_active = last_active(record.activity, activity, record.last_active, now)
        record.activity = activity
        if now - record.last_active >= idle_after and record.unload_task is None:
            record.unload_task = asyncio.create_task(
                self._idle_unload(record), name=f"idle-unload-{record.name}"
            )

    def seen_download(self, name: str, download: Download | None) -> None:
        """What the HF cache holds for a model."""
        if record := self._models.get(name):
            record.download = download

    # ---- idle unload -----------------------------------------------------------------

    async def _idle_unload(self, record: ModelRecord) -> None:
        idle_after = record.config.idle_unload_after_s or 0.0
        try:
            idle_s = round(time.monotonic() - record.last_active)
            async with self._operation(IDLE_UNLOAD, record, {"idle_s": idle_s}):
                # A switch to it, or a request, may have come while this waited its turn.
                if record.state is not State.RUNNING:
                    return
                if time.monotonic() - record.last_active < idle_after:
                    return
                reason = f"idle for {idle_s}s (idle_unload_after_s={idle_after:g})"
                if self._may_park(record):
                    # A backend that will not sleep is stopped by _park itself.
                    action = "parked" if await self._park(record, reason) else "stopped"
                else:
                    await self._stop_model(record, reason)
                    action = "stopped"
                self._events.publish("idle.unloaded", model=record.name, action=action)
        except ModeldError:
            pass  # logged by _operation; the monitor tries again at its next pass
        finally:
            record.unload_task = None

    def _may_park(self, record: ModelRecord) -> bool:
        """Sleep mode is on for it and its weights fit in what is left of the RAM budget."""
        return (
            record.config.sleep_mode
            and self._config.daemon.park_ram_gb > 0
            and record.config.parked_ram_gb <= self._ledger.ram_free_gb(self._models.values())
        )

    # ---- helpers ---------------------------------------------------------------------

    def _record(self, name: str, managed: bool = False) -> ModelRecord:
        record = self._models.get(name)
        if record is None or (managed and record.unmanaged):
            available = sorted(n for n, r in self._models.items() if not r.unmanaged)
            why = " (removed from the config; it runs unmanaged until stopped)" if record else ""
            raise UnknownModel(
                f"Model '{name}' not found{why}. Available: {available}",
                model=name,
                available=available,
            )
        return record

    def _still_configured(self, record: ModelRecord, op: str) -> None:
        """Under the lock: the record a call looked up before its turn is still the one
        configured (a reload meanwhile may have removed it)."""
        if self._models.get(record.name) is record and not (
            record.unmanaged and op in MANAGED_ONLY
        ):
            return
        self._record(record.name, managed=op in MANAGED_ONLY)  # raises UnknownModel
        raise UnknownModel(
            f"Model '{record.name}' was replaced by a reload while this call waited; call again",
            model=record.name,
            available=sorted(n for n, r in self._models.items() if not r.unmanaged),
        )

    def _daemon_settings(self) -> DaemonConfig:
        return self._config.daemon

    def _runtime(self, record: ModelRecord) -> Runtime:
        return self._runtimes[record.config.runtime]

    async def _check_runtime(self, record: ModelRecord) -> None:
        """Fail with RuntimeUnavailable before changing anything if the engine is down."""
        runtime = record.config.runtime
        try:
            await self._runtime(record).inspect(record.config)
        except RuntimeUnavailable as exc:
            self.seen_runtime(runtime, exc.message)
            raise
        self.seen_runtime(runtime, None)


@dataclass
class _Begun:
    """What an operation started under the lock, for its caller to wait on outside it."""

    record: ModelRecord
    result: dict[str, Any]
    load: asyncio.Task[ModeldError | None] | None = None
    moved: list[str] = field(default_factory=list)
    waking: bool = False
    failure: ModeldError | None = None


class _LoadsInTheWay(Exception):
    """The target fits only once loads now in flight have ended (loading models are
    never evicted): wait for one outside the lock, then plan again."""

    def __init__(self, loads: list[asyncio.Task[Any]]) -> None:
        super().__init__("loads in the way")
        self.loads = loads


def _success(
    record: ModelRecord, unloaded: list[str], memory_info: dict[str, Any] | None
) -> dict[str, Any]:
    """The seed's `success` answer, before the outcome of the load is known."""
    return {
        "status": "success",
        "model": record.name,
        "unloaded_models": unloaded,
        "estimated_load_time_seconds": round(record.load_estimate_s(), 1),
        "memory_info": memory_info
        or {"required_gb": None, "available_before_gb": None, "freed_gb": 0},
    }


async def _wait_load(
    record: ModelRecord, load: asyncio.Task[ModeldError | None], timeout: float | None
) -> ModeldError | None:
    """A load's outcome; a caller's own deadline (OperationTimeout: the load goes on), or
    the load ended by a stop (LoadFailed saying so)."""
    try:
        return await asyncio.wait_for(asyncio.shield(load), timeout)
    except TimeoutError:
        raise OperationTimeout(
            f"{record.name} is still loading after {timeout}s; the load goes on",
            model=record.name,
            state=record.state.value,
        ) from None
    except asyncio.CancelledError:
        if load.cancelled() and not _current_task_cancelling():
            return LoadFailed(
                f"{record.name}: stopped while loading (the load was ended by a stop)",
                model=record.name,
                reason="stopped",
            )
        raise


def _left(deadline: float | None) -> float | None:
    """Seconds to a deadline (at least a moment), or None for none."""
    return None if deadline is None else max(0.001, deadline - time.monotonic())


def _crashed(record: ModelRecord, exc: Exception) -> LoadFailed:
    """An unexpected error while watching a load, as the load's failure."""
    log.error("load.watch_crashed", model=record.name, error=repr(exc))
    return LoadFailed(f"{record.name}: load failed: {exc!r}", model=record.name, reason=repr(exc))


def _without_lines(models: dict[str, Any]) -> dict[str, Any]:
    """Model views with their failures' backend output left out."""
    return {
        name: {**view, "failure": {**view["failure"], "last_lines": []}}
        if view.get("failure")
        else view
        for name, view in models.items()
    }


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
