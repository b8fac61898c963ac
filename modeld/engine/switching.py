"""Switching: bring a model up as the pure decision (core/decision.py) says, under the
lock; wait for it outside the lock; bring back what a failed switch stopped.

A reader can follow a switch top-down here: `bring_up` (the lock's scope) -> `_begin`
(gather facts, decide, carry the decision out) -> `_finish` (wait for health, roll back
on failure). Making room and undoing it is room.py's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog

from modeld.core.decision import (
    AlreadyRunning,
    Decision,
    Drain,
    Execute,
    JoinLoad,
    NeedPlan,
    Refusal,
    Refuse,
    SwitchFacts,
    WaitForLoads,
    decide_switch,
)
from modeld.core.errors import (
    ModeldError,
    UnknownModel,
)
from modeld.core.planner import Infeasible, Plan
from modeld.core.states import State
from modeld.engine.backends import Backends
from modeld.engine.facts import LoadTask
from modeld.engine.leases import Leases
from modeld.engine.model import Model
from modeld.engine.operations import AUTO_RESTART, Asker, Operations
from modeld.engine.preview import (
    decide_with_plans,
    memory_info,
    preview_switch,
    success_answer,
    would_evict,
)
from modeld.engine.room import AdapterRoom, Room, left
from modeld.wire.events import SwitchPlanned
from modeld.wire.results import MemoryInfo, PlanResult, StopResult, SwitchResult

log = structlog.get_logger("modeld.engine.switching")


@dataclass
class _Begun:
    """What an operation started under the lock, for its caller to wait on outside it."""

    model: Model
    result: SwitchResult
    load_task: LoadTask | None = None
    moved: list[str] = field(default_factory=list)
    waking: bool = False
    failure: ModeldError | None = None


@dataclass
class _Underway:
    """Bring-ups of one model in progress, and when the last of them ends."""

    count: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Blocked:
    """The decision says to wait outside the lock (for loads, or for a drain), then
    decide again."""

    decision: WaitForLoads | Drain


class Switcher:
    """Brings models up: switch, start, restart, the restart policy's retries."""

    def __init__(
        self, backends: Backends, operations: Operations, room: Room, leases: Leases
    ) -> None:
        self._backends = backends
        self._registry = backends.registry
        self._ops = operations
        self._leases = leases
        self.room = room
        # Models being brought up now: a lease that may not cause a load joins one of
        # these even before the model is loading (while room is made for it).
        self._underway: dict[str, _Underway] = {}

    def underway(self, name: str) -> bool:
        """Whether a switch, start or restart of `name` is in progress."""
        return name in self._underway

    async def settled(self, name: str) -> None:
        """Return once no switch, start or restart of `name` is in progress."""
        while (under := self._underway.get(name)) is not None:
            await under.ended.wait()

    @contextmanager
    def _bringing(self, name: str) -> Iterator[None]:
        under = self._underway.setdefault(name, _Underway())
        under.count += 1
        try:
            yield
        finally:
            under.count -= 1
            if not under.count:
                del self._underway[name]
                under.ended.set()

    async def preview(self, model: Model, force: bool) -> PlanResult:
        """What a switch to `model` would do now, and why; changes nothing."""
        return await preview_switch(self._backends, self._leases, model, force)

    @contextlib.asynccontextmanager
    async def no_requests(self, name: str, force: bool) -> AsyncIterator[None]:
        """Drain `name` first if it serves requests (ModelsBusy past drain_timeout_s),
        keeping new acquires waiting until the block is done; `force` skips it."""
        drained = []
        if not force and self._leases.busy(name):
            drained = await self.room.drain([name], None)
        try:
            yield
        finally:
            self._leases.end_drain(drained)

    async def bring_down(self, model: Model, caller: Asker | None, force: bool) -> StopResult:
        """Stop a model's backend once its requests in flight have ended (or at once with
        `force`); stopping a stopped model is fine."""
        async with (
            self.no_requests(model.name, force),
            self._ops.operation("stop", model, caller),
        ):
            if model.state is State.STOPPED:
                return StopResult(status="already_stopped", model=model.name)
            await self._backends.check_runtime(model)
            await self._backends.stop_model(model, "requested")
            return StopResult(status="stopped", model=model.name)

    async def bring_back(self, model: Model) -> bool:
        """The restart policy's retry: start it again if it is still down; False if that
        failed (a model removed by a reload meanwhile counts as done)."""
        try:
            async with self._ops.operation(AUTO_RESTART, model, None):
                # An operator's own operation cancels a pending restart before it gets
                # here; a model found running again (re-adopted) needs none.
                if model.state not in (State.FAILED, State.STOPPED):
                    return True
                begun = await self._begin(model, evict=False)
            if isinstance(begun, _Blocked):
                return False
            with self._ops.counted():
                await self._finish(begun, wait=True, timeout=None)
        except UnknownModel:
            return True
        except ModeldError:
            return False
        return True

    async def bring_up(
        self,
        op: str,
        model: Model,
        caller: Asker | None,
        *,
        evict: bool,
        wait: bool,
        timeout: float | None,
        restart: bool = False,
        force: bool = False,
    ) -> SwitchResult:
        """Decide, make room and start under the lock; wait for health outside it, so
        other operations never queue behind an unrelated load. When loads in flight hold
        the memory the target needs, wait (outside the lock) for them to settle and decide
        again: a loading model is never evicted from under its waiting callers. Models
        serving requests (leases) are drained first, unless `force`."""
        if model.config.base:
            return await self._bring_up_adapter(
                op,
                model,
                caller,
                evict=evict,
                wait=wait,
                timeout=timeout,
                restart=restart,
                force=force,
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        drained: list[str] = []
        # Meanwhile a lease that may not cause a load joins this one (underway()).
        with self._bringing(model.name):
            try:
                while True:
                    async with self._ops.operation(op, model, caller):
                        if restart:
                            await self._backends.check_runtime(model)
                            if model.state is not State.STOPPED:
                                await self._backends.stop_model(model, "restart")
                                models = self._registry.models.values()
                                await self._backends.ledger.wait_for_room(model, models)
                            restart = False
                        begun = await self._begin(model, evict=evict, force=force)
                    if not isinstance(begun, _Blocked):
                        break
                    if isinstance(begun.decision, Drain):
                        drained += await self.room.drain(list(begun.decision.busy), deadline)
                    else:
                        await self.room.settle(model, deadline)
            finally:
                # The evicted are gone (or the switch gave up): their acquires may go on.
                self._leases.end_drain(drained)
            with self._ops.counted():
                return await self._finish(begun, wait, left(deadline))

    async def _bring_up_adapter(
        self,
        op: str,
        adapter: Model,
        caller: Asker | None,
        *,
        evict: bool,
        wait: bool,
        timeout: float | None,
        restart: bool,
        force: bool,
    ) -> SwitchResult:
        """An adapter: its base first, as any model (room made for it on the GPU, a load
        under way joined; never restarted when it runs), then, under the lock, room in
        the base (idle adapters unloaded, busy ones drained first) and its load, waited
        for outside the lock."""
        deadline = None if timeout is None else time.monotonic() + timeout
        base = self._backends.loras.base_of(adapter)
        with self._bringing(adapter.name):
            based = None
            if base.state is not State.RUNNING:
                based = await self.bring_up(
                    op, base, caller, evict=evict, wait=False, timeout=left(deadline), force=force
                )
            unloaded = list(based.unloaded_models or []) if based else []
            drained: list[str] = []
            try:
                while True:
                    async with self._ops.operation(op, adapter, caller):
                        if restart and adapter.state is not State.STOPPED:
                            await self._backends.stop_model(adapter, "restart")
                        restart = False
                        self._registry.count_demand(adapter)
                        if adapter.state is State.RUNNING:
                            adapter.touched()
                            message = f"Model '{adapter.name}' is already running and healthy"
                            return SwitchResult(
                                status="already_loaded", model=adapter.name, message=message
                            )
                        room = AdapterRoom()  # joining its own load: nothing to make
                        if adapter.state is not State.LOADING:
                            room = await self.room.adapter_room(adapter, force)
                            unloaded += room.unloaded
                            if room.made:
                                await self._backends.start_model(adapter)
                        load_task = adapter.load_task
                    if room.made:
                        break
                    if room.drain is not None:
                        drained += await self.room.drain([room.drain], deadline)
                    else:
                        await self.room.settle(adapter, deadline)  # a slot's load ends
            finally:
                self._leases.end_drain(drained)
            memory = based.memory_info if based else None
            begun = _Begun(adapter, success_answer(adapter, unloaded, memory), load_task=load_task)
            with self._ops.counted():
                return await self._finish(begun, wait, left(deadline))

    async def _decide(self, model: Model, evict: bool, force: bool) -> Decision:
        """Gather the facts (reading the GPU and planning only when the target is down)
        and decide."""
        facts = SwitchFacts(model.state, evict, force)
        decision = decide_switch(facts)
        if not isinstance(decision, NeedPlan):
            return decision
        await self._backends.check_runtime(model)
        # Nothing is loaded on an unusable device (gpu_health.py).
        self._backends.ledger.health.check(model.name, model.config.gpus)
        if decision.clear_failed:
            # A failed backend may linger (vLLM's API server outlives its dead engine):
            # stop it first, so its memory is not counted twice.
            await self._backends.stop_model(model, "clearing failed backend before start")
        decided, *_ = await decide_with_plans(self._backends, self._leases, model, evict, force)
        return decided

    async def _begin(self, model: Model, *, evict: bool, force: bool = False) -> _Begun | _Blocked:
        """Under the lock: decide, then stop or park what must go and start (or begin
        waking) the target. Returns what the caller waits on, outside the lock."""
        decision = await self._decide(model, evict, force)
        match decision:
            case AlreadyRunning():
                self._registry.count_demand(model)
                model.touched()
                message = f"Model '{model.name}' is already running and healthy"
                return _Begun(
                    model,
                    SwitchResult(status="already_loaded", model=model.name, message=message),
                )
            case JoinLoad():
                self._registry.count_demand(model)
                return _Begun(model, success_answer(model, [], None), load_task=model.load_task)
            case WaitForLoads() | Drain():
                return _Blocked(decision)
            case Refuse(reason=Refusal.NO_ROOM, plan=Infeasible() as infeasible):
                raise self.room.no_room(model, infeasible)
            case Refuse(plan=Plan() as plan):
                self._registry.count_demand(model)
                raise would_evict(model, plan, self._memory_info(model, plan))
            case Execute(plan=plan):
                return await self._execute(model, plan)
        raise AssertionError(f"undecided: {decision!r}")

    async def _execute(self, model: Model, plan: Plan) -> _Begun:
        """Carry out a plan: make room, wait for the driver to show it, start or wake."""
        self._registry.count_demand(model)
        memory_info = self._memory_info(model, plan)
        log.info(
            "switch.plan",
            model=model.name,
            stop=list(plan.stop),
            park=list(plan.park),
            **memory_info.answer(),
        )
        self._registry.events.publish(
            SwitchPlanned(
                model=model.name,
                stop=list(plan.stop),
                park=list(plan.park),
                memory_info=memory_info,
                policy=self._registry.config.daemon.eviction_policy,
            )
        )
        stopped, parked = await self.room.make_room(model, plan)
        moved = [*stopped, *parked]
        result = success_answer(model, moved, memory_info).model_copy(
            update={"parked_models": parked}
        )
        begun = _Begun(model, result, moved=moved)
        try:
            begun.waking = await self.room.start_or_wake(model, stopped, parked)
        except ModeldError as failure:
            begun.failure = failure  # the caller rolls back, outside the lock
        begun.load_task = model.load_task
        return begun

    def _memory_info(self, model: Model, plan: Plan) -> MemoryInfo:
        return memory_info(self._backends, model, plan)

    async def _finish(self, begun: _Begun, wait: bool, timeout: float | None) -> SwitchResult:
        """Outside the lock: wait for the load begun (or joined), roll back on failure."""
        model, result = begun.model, begun.result
        if result.status == "already_loaded":
            return result
        failure = begun.failure
        if failure is None and wait and begun.load_task is not None:
            failure = await self._backends.wait_load(model, begun.load_task, timeout)
        if failure is not None:
            # A failed switch should not leave users with nothing: bring back what it
            # stopped. A caller's own timeout is not a failure: the load goes on.
            rollback = begun.moved and self._registry.config.daemon.rollback_on_failure
            if rollback and model.state is State.FAILED:
                failure.data.update(await self.room.restore(tuple(begun.moved), model.name))
            raise failure
        outcome: dict[str, object] = {}
        woke = None
        if begun.waking and wait:
            woke_s = model.sleep.last_wake_s
            woke = model.sleep.fallback is None
            outcome |= {
                "woke": woke,
                "wake_seconds": round(woke_s, 2) if woke_s else None,
                "wake_fallback": model.sleep.fallback,
            }
        # A woken model did not load: its wake time is in wake_seconds.
        loaded = None if woke else model.loading.last_s
        outcome |= {
            "state": model.state.value,
            "health": model.health.value,
            "load_seconds": round(loaded, 2) if loaded else None,
        }
        return result.model_copy(update=outcome)
