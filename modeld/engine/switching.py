"""Switching: bring a model up, stopping or parking no more than the plan says, under
the lock; wait for it outside the lock; bring back what a failed switch stopped.

A reader can follow a switch top-down here: `load` (the lock's scope) -> `bring_up`
(plan, make room, start or begin waking) -> `finish` (wait for health, roll back on
failure)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from modeld.core.errors import (
    InsufficientMemory,
    LoadFailed,
    ModeldError,
    OperationTimeout,
    UnknownModel,
)
from modeld.core.planner import Infeasible, Plan
from modeld.core.states import State
from modeld.engine.leases import Leases
from modeld.engine.lifecycle import Lifecycle
from modeld.engine.metrics import MetricsSink
from modeld.engine.model import Model
from modeld.engine.operations import AUTO_RESTART, Caller, Operations
from modeld.engine.parking import Parking

log = structlog.get_logger("modeld.engine.switching")

# cost_aware: at each request every model's demand decays by this factor, so favourites
# that stop being asked for stop being protected within a few dozen requests.
DEMAND_DECAY = 0.95
# A parked model may keep more than planned: plan again after parking, at most this often.
PLAN_ROUNDS = 3


class Switcher:
    """Brings models up: switch, start, restart, the restart policy's retries."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        operations: Operations,
        parking: Parking,
        leases: Leases,
        metrics: MetricsSink,
    ) -> None:
        self._life = lifecycle
        self._ops = operations
        self._parking = parking
        self._leases = leases
        self._metrics = metrics

    async def bring_back(self, record: Model) -> bool:
        """The restart policy's retry: start it again if it is still down; False if that
        failed (a model removed by a reload meanwhile counts as done)."""
        try:
            async with self._ops.operation(AUTO_RESTART, record, None):
                # An operator's own operation cancels a pending restart before it gets
                # here; a model found running again (re-adopted) needs none.
                if record.state not in (State.FAILED, State.STOPPED):
                    return True
                begun = await self._bring_up(record, evict=False)
            with self._ops.counted():
                await self._finish(begun, wait=True, timeout=None)
        except UnknownModel:
            return True
        except (ModeldError, _LoadsInTheWay, _LeasesInTheWay):
            return False
        return True

    async def load(
        self,
        op: str,
        record: Model,
        caller: Caller | None,
        *,
        evict: bool,
        wait: bool,
        timeout: float | None,
        restart: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        """Decide, make room and start under the lock; wait for health outside it, so
        other operations never queue behind an unrelated load. When loads in flight hold
        the memory the target needs, wait (outside the lock) for them to settle and plan
        again: a loading model is never evicted from under its waiting callers. Models
        serving requests (leases) are drained first, unless `force`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        drained: list[str] = []
        try:
            while True:
                async with self._ops.operation(op, record, caller):
                    if restart:
                        await self._life.check_runtime(record)
                        if record.state is not State.STOPPED:
                            await self._life.stop_model(record, "restart")
                            records = self._life.records.values()
                            await self._life.ledger.wait_for_room(record, records)
                        restart = False
                    try:
                        begun = await self._bring_up(record, evict=evict, force=force)
                    except _LoadsInTheWay as blocked:
                        loads, busy = blocked.loads, []
                    except _LeasesInTheWay as blocked:
                        loads, busy = [], blocked.busy
                    else:
                        break
                if busy:
                    drained += await self.drain(busy, deadline)
                else:
                    await self._settle(record, loads, deadline)
        finally:
            # The evicted are gone (or the switch gave up): their acquires may go on.
            self._leases.end_drain(drained)
        with self._ops.counted():
            return await self._finish(begun, wait, _left(deadline))

    async def drain(self, names: list[str], deadline: float | None) -> list[str]:
        """Outside the lock: close the gate on `names` (new acquires wait), then wait for
        their leases to end, up to drain_timeout_s (ModelsBusy: nothing was stopped). The
        names this call closed, for the caller to open again once they are evicted."""
        closed = self._leases.begin_drain(names)
        for name in names:
            log.info("drain.begun", model=name, leases=self._leases.held(name))
            self._life.events.publish("drain", model=name, leases=self._leases.held(name))
        limit = self._life.config.daemon.drain_timeout_s
        left = _left(deadline)
        try:
            with self._ops.counted():
                await self._leases.drained(names, limit if left is None else min(limit, left))
        except ModeldError as refusal:
            self._leases.end_drain(closed)
            self._metrics.models_busy()
            raise refusal from None
        return closed

    async def _settle(
        self, record: Model, loads: list[asyncio.Task[Any]], deadline: float | None
    ) -> None:
        """Wait for one of the loads in the way to end (the caller's deadline applies)."""
        with self._ops.counted():
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

    async def _bring_up(self, record: Model, *, evict: bool, force: bool = False) -> _Begun:
        """Under the lock: plan, stop or park what must go, start (or begin waking) the
        target. Returns what the caller waits on, outside the lock."""
        if record.state is State.RUNNING:
            self.count_demand(record)
            record.touched()
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
            self.count_demand(record)
            return _Begun(record, _success(record, [], None), load=record.load)
        await self._life.check_runtime(record)
        if record.state is State.FAILED:
            # A failed backend may linger (vLLM's API server outlives its dead engine):
            # stop it first, so its memory is not counted twice.
            await self._life.stop_model(record, "clearing failed backend before start")
        records = self._life.records.values()
        reading = await self._life.ledger.read(records)
        protected = self._protected(force)
        plan = self._life.ledger.plan(record, records, reading, protected)
        if isinstance(plan, Infeasible):
            loads = [
                r.load
                for r in records
                if r is not record and r.state is State.LOADING and r.load is not None
            ]
            if loads:
                raise _LoadsInTheWay(loads)
            if not force:
                # Would it fit once the models serving requests were drained?
                drained = self._life.ledger.plan(record, records, reading)
                if not isinstance(drained, Infeasible):
                    busy = [n for n in (*drained.stop, *drained.park) if protected(n)]
                    if busy:
                        raise _LeasesInTheWay(busy)
            raise self._insufficient(record, plan)
        self.count_demand(record)
        memory_info = {
            "required_gb": round(plan.required_gb, 1),
            "available_before_gb": round(plan.available_before_gb, 1),
            "freed_gb": round(plan.freed_gb, 1),
            "device": plan.device,
            "source": self._life.ledger.need(record).source.value,
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
        self._life.events.publish(
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
            await self._life.ledger.wait_for_room(record, self._life.records.values())
            if moved:
                self._life.events.publish(
                    "switch.room_ready", model=record.name, free_gb=self._life.ledger.free_gb()
                )
                log.info(
                    "switch.room_ready",
                    model=record.name,
                    stopped=stopped,
                    parked=parked,
                    free_gb=self._life.ledger.free_gb(),
                )
            if record.state is State.SLEEPING:
                self._parking.begin_wake(record)
                begun.waking = True
            else:
                await self._life.start_model(record)
        except ModeldError as failure:
            begun.failure = failure  # the caller rolls back, outside the lock
        begun.load = record.load
        return begun

    def _protected(self, force: bool) -> Callable[[str], bool]:
        """Who plans must not evict beyond pinned and loading models: those serving
        requests, unless an operator forces it."""
        return (lambda _: False) if force else self._leases.protected

    def count_demand(self, record: Model) -> None:
        """A request for `record`'s model (a switch, or a lease granted without one):
        cost_aware's demand decays everyone's and counts for it; lru's clock moves."""
        for other in self._life.records.values():
            other.demand_decayed(DEMAND_DECAY)
        record.asked_for()

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
            rollback = begun.moved and self._life.config.daemon.rollback_on_failure
            if rollback and record.state is State.FAILED:
                failure.data.update(await self._restore(tuple(begun.moved), record.name))
            raise failure
        if begun.waking and wait:
            result.update(
                woke=record.sleep.fallback is None,
                wake_seconds=round(record.sleep.last_wake_s, 2)
                if record.sleep.last_wake_s
                else None,
                wake_fallback=record.sleep.fallback,
            )
        result["state"] = record.state.value
        result["health"] = record.health.value
        # A woken model did not load: its wake time is in wake_seconds.
        loaded = None if result.get("woke") else record.loading.last_s
        result["load_seconds"] = round(loaded, 2) if loaded else None
        return result

    async def _make_room(self, record: Model, plan: Plan) -> tuple[list[str], list[str]]:
        """Carry out a plan: stops first (they may give back host RAM the parks need), then
        parks. A parked model may keep more than planned: plan again, a few times at most."""
        stopped: list[str] = []
        parked: list[str] = []
        for _ in range(PLAN_ROUNDS):
            for name in plan.stop:
                await self._life.stop_model(self._life.records[name], f"evicted for {record.name}")
                self._metrics.evicted(name)
                stopped.append(name)
                self._life.events.publish("switch.stopped", model=record.name, stopped=name)
            for name in plan.park:
                self._metrics.evicted(name)
                if await self._parking.park(self._life.records[name], f"parked for {record.name}"):
                    parked.append(name)
                    self._life.events.publish("switch.parked", model=record.name, parked=name)
                else:
                    stopped.append(name)
                    self._life.events.publish("switch.stopped", model=record.name, stopped=name)
            if not plan.park:
                break
            reading = await self._life.ledger.read(self._life.records.values())
            replanned = self._life.ledger.plan(
                record, self._life.records.values(), reading, self._protected(False)
            )
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

    async def _restore(self, names: tuple[str, ...], failed: str) -> dict[str, Any]:
        """Start again the models a failed switch stopped; say which came back."""
        restored: list[str] = []
        not_restored: dict[str, str] = {}
        for name in names:
            victim = self._life.records[name]
            try:
                async with self._ops.operation("rollback", victim, None):
                    await self._life.ledger.wait_for_room(victim, self._life.records.values())
                    if victim.state is State.SLEEPING:
                        self._parking.begin_wake(victim)
                    elif victim.state in (State.STOPPED, State.FAILED):
                        await self._life.start_model(victim)
                if victim.load is not None and (failure := await asyncio.shield(victim.load)):
                    raise failure
            except ModeldError as exc:
                not_restored[name] = exc.message
            else:
                restored.append(name)
        log.info("switch.rolled_back", model=failed, restored=restored, not_restored=not_restored)
        return {"restored": restored, "not_restored": not_restored}

    def _insufficient(self, record: Model, plan: Infeasible) -> InsufficientMemory:
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


@dataclass
class _Begun:
    """What an operation started under the lock, for its caller to wait on outside it."""

    record: Model
    result: dict[str, Any]
    load: asyncio.Task[ModeldError | None] | None = None
    moved: list[str] = field(default_factory=list)
    waking: bool = False
    failure: ModeldError | None = None


class _LeasesInTheWay(Exception):
    """The target fits only once models serving requests are drained."""

    def __init__(self, busy: list[str]) -> None:
        super().__init__("leases in the way")
        self.busy = busy


class _LoadsInTheWay(Exception):
    """The target fits only once loads now in flight have ended (loading models are
    never evicted): wait for one outside the lock, then plan again."""

    def __init__(self, loads: list[asyncio.Task[Any]]) -> None:
        super().__init__("loads in the way")
        self.loads = loads


def _success(
    record: Model, unloaded: list[str], memory_info: dict[str, Any] | None
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
    record: Model, load: asyncio.Task[ModeldError | None], timeout: float | None
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


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
