"""Making room for a switch, and undoing it: carry out a plan's stops and parks (plan
again when a parked model kept more than planned), drain models serving requests, wait
for loads in the way, bring back what a failed switch stopped, and the refusals that
name the numbers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from modeld.core.errors import InsufficientMemory, ModeldError, OperationTimeout
from modeld.core.planner import Infeasible, Plan
from modeld.core.states import State
from modeld.engine.backends import Backends
from modeld.engine.leases import Leases
from modeld.engine.model import Model
from modeld.engine.operations import Operations
from modeld.engine.parking import Parking
from modeld.wire.events import Draining, RoomReady, SwitchParked, SwitchStopped

log = structlog.get_logger("modeld.engine.room")

# A parked model may keep more than planned: plan again after parking, at most this often.
PLAN_ROUNDS = 3


@dataclass(frozen=True)
class AdapterRoom:
    """What making room in a base for an adapter came to: the adapters unloaded, and,
    while there is still none, what is in the way: an adapter serving requests to drain
    first, or only adapters still loading (a load to wait for)."""

    unloaded: list[str] = field(default_factory=list)
    drain: str | None = None
    loads: bool = False

    @property
    def made(self) -> bool:
        """There is room: the adapter may be loaded now."""
        return self.drain is None and not self.loads


class Room:
    """Stops, parks, drains and restores for the Switcher; and the one "wait for the
    room, then start or wake"."""

    def __init__(
        self,
        backends: Backends,
        operations: Operations,
        parking: Parking,
        leases: Leases,
    ) -> None:
        self._backends = backends
        self._registry = backends.registry
        self._ops = operations
        self._parking = parking
        self._leases = leases

    async def drain(self, names: list[str], deadline: float | None) -> list[str]:
        """Outside the lock: close the gate on `names` (new acquires wait), then wait for
        their leases to end, up to drain_timeout_s (ModelsBusy: nothing was stopped). The
        names this call closed, for the caller to open again once they are evicted."""
        closed = self._leases.begin_drain(names)
        for name in names:
            log.info("drain.begun", model=name, leases=self._leases.held(name))
            self._registry.events.publish(Draining(model=name, leases=self._leases.held(name)))
        limit = self._registry.config.daemon.drain_timeout_s
        remaining = left(deadline)
        try:
            with self._ops.counted():
                await self._leases.drained(
                    names, limit if remaining is None else min(limit, remaining)
                )
        except ModeldError as refusal:
            self._leases.end_drain(closed)
            raise refusal from None
        return closed

    async def settle(self, model: Model, deadline: float | None) -> None:
        """Wait for one of the loads in the way to end (the caller's deadline applies)."""
        loads: list[asyncio.Task[Any]] = [
            r.load_task
            for r in self._registry.models.values()
            if r is not model and r.state is State.LOADING and r.load_task is not None
        ]
        if not loads:
            return  # they ended while this waited for its turn
        with self._ops.counted():
            done, _ = await asyncio.wait(
                [asyncio.shield(load) for load in loads],
                timeout=left(deadline),
                return_when=asyncio.FIRST_COMPLETED,
            )
        if not done:
            raise OperationTimeout(
                f"{model.name}: still waiting for other models' loads to end after the "
                "timeout; nothing was changed for it",
                model=model.name,
                state=model.state.value,
            )

    async def make_room(self, model: Model, plan: Plan) -> tuple[list[str], list[str]]:
        """Carry out a plan: stops first (they may give back host RAM the parks need), then
        parks. A parked model may keep more than planned: plan again, a few times at most."""
        stopped: list[str] = []
        parked: list[str] = []
        for _ in range(PLAN_ROUNDS):
            for name in plan.stop:
                await self._backends.stop_model(
                    self._registry.models[name], f"evicted for {model.name}"
                )
                stopped.append(name)
                self._registry.events.publish(SwitchStopped(model=model.name, stopped=name))
            for name in plan.park:
                if await self._parking.park(
                    self._registry.models[name], f"parked for {model.name}"
                ):
                    parked.append(name)
                    self._registry.events.publish(SwitchParked(model=model.name, parked=name))
                else:
                    stopped.append(name)
                    self._registry.events.publish(SwitchStopped(model=model.name, stopped=name))
            if not plan.park:
                break
            reading = await self._backends.ledger.read(self._registry.models.values())
            replanned = self._backends.ledger.plan(
                model, self._registry.models.values(), reading, self._leases.busy
            )
            if isinstance(replanned, Infeasible):
                raise self.no_room(model, replanned)
            if not (replanned.stop or replanned.park):
                break
            log.info(
                "switch.replan",
                model=model.name,
                stop=list(replanned.stop),
                park=list(replanned.park),
                why="a parked model kept more memory than planned",
            )
            plan = replanned
        return stopped, parked

    async def start_or_wake(
        self, model: Model, stopped: Sequence[str] = (), parked: Sequence[str] = ()
    ) -> bool:
        """Under the lock, once the driver shows the room (said, when models were
        `stopped` or `parked` for it): wake `model` if it is parked, else start it (the
        caller waits on its load_task). True if it is waking."""
        await self._backends.ledger.wait_for_room(model, self._registry.models.values())
        if stopped or parked:
            free = self._backends.ledger.free_gb()
            self._registry.events.publish(RoomReady(model=model.name, free_gb=free))
            log.info(
                "switch.room_ready",
                model=model.name,
                stopped=list(stopped),
                parked=list(parked),
                free_gb=free,
            )
        if model.state is State.SLEEPING:
            self._parking.begin_wake(model)
            return True
        await self._backends.start_model(model)
        return False

    async def adapter_room(self, adapter: Model, force: bool) -> AdapterRoom:
        """Under the lock: make room in its base for `adapter` (the base holds at most its
        capacity): unload the least recently used idle adapter while it is full. When
        every one loaded serves requests, the one to drain first; when the others are
        still loading, a load to wait for (never one past the capacity meanwhile).
        `force` unloads busy ones too."""
        loras = self._backends.loras
        base = loras.base_of(adapter)
        capacity = loras.capacity(base)
        unloaded: list[str] = []
        while True:
            loaded = [
                a
                for a in loras.adapters_of(base)
                if a is not adapter and a.state in (State.LOADING, State.RUNNING)
            ]
            if len(loaded) < capacity:
                return AdapterRoom(unloaded)
            movable = [
                a
                for a in loaded
                if a.state is State.RUNNING and (force or not self._leases.busy(a.name))
            ]
            if not movable:
                busy = [a for a in loaded if a.state is State.RUNNING]
                if not busy:
                    return AdapterRoom(unloaded, loads=True)
                return AdapterRoom(unloaded, drain=min(busy, key=lambda a: a.usage.last_used).name)
            victim = min(movable, key=lambda a: a.usage.last_used)
            why = f"unloaded for {adapter.name} ({base.name} holds {capacity} adapters)"
            await self._backends.stop_model(victim, why)
            self._registry.events.publish(SwitchStopped(model=adapter.name, stopped=victim.name))
            unloaded.append(victim.name)

    async def restore(
        self, names: tuple[str, ...], failed: str
    ) -> dict[str, list[str] | dict[str, str]]:
        """Start again the models a failed switch stopped; say which came back (the
        fields the failure's error data carries: `restored`, `not_restored`)."""
        restored: list[str] = []
        not_restored: dict[str, str] = {}
        for name in names:
            victim = self._registry.models[name]
            try:
                async with self._ops.operation("rollback", victim, None):
                    if victim.state in (State.SLEEPING, State.STOPPED, State.FAILED):
                        await self.start_or_wake(victim)
                # Not through a shutdown: a daemon that stops says so, and exits.
                if victim.load_task is not None and (
                    failure := await self._backends.wait_load(victim, victim.load_task, None)
                ):
                    raise failure
            except ModeldError as exc:
                not_restored[name] = exc.message
            else:
                restored.append(name)
        log.info("switch.rolled_back", model=failed, restored=restored, not_restored=not_restored)
        return {"restored": restored, "not_restored": not_restored}

    def no_room(self, model: Model, plan: Infeasible) -> InsufficientMemory:
        """No plan makes room: the refusal, with the planner's numbers, which models stay
        and why, and what the operator can do."""
        kept = staying(self._registry.models, plan.blocked_by)
        outside = self._backends.ledger.held_outside([plan.device])
        return InsufficientMemory(
            f"Cannot free enough GPU memory to load {model.name} on GPU {plan.device}. "
            f"Required: {plan.required_gb:.1f}GB, Available after unloading all models: "
            f"{plan.total_available_gb:.1f}GB. {why_no_room(kept)}"
            + (f" Held outside modeld: {outside}." if outside else ""),
            model=model.name,
            staying=kept,
            device=plan.device,
            required_gb=round(plan.required_gb, 1),
            available_gb=round(plan.available_gb, 1),
            freed_gb=round(plan.freed_gb, 1),
            total_available_gb=round(plan.total_available_gb, 1),
            pinned_blocking=list(plan.blocked_by),
        )


# Why a model the planner may not move stays, and what would let it go.
STAYS = {
    "pinned": "set pinned = false in its table and run modelctl reload",
    "loading": "wait for its load to end",
    "serving requests": "wait for its requests to end, or switch with force",
}


def staying(models: Mapping[str, Model], names: Iterable[str]) -> dict[str, str]:
    """Why each of `names` (the models a plan may not move) stays: pinned, loading, or
    serving requests."""
    reasons = {}
    for name in names:
        model = models[name]
        if model.config.pinned:
            reasons[name] = "pinned"
        elif model.state is State.LOADING:
            reasons[name] = "loading"
        else:
            reasons[name] = "serving requests"
    return reasons


def why_no_room(kept: Mapping[str, str]) -> str:
    """A sentence: who stays and why, and what the operator can do; or, when no model
    is in the way, that the rest is held outside modeld or the GPU is too small."""
    if not kept:
        return (
            "No model is in the way: the rest is held by processes outside modeld, or the "
            "GPU is too small for it."
        )
    named = ", ".join(f"{name} ({why})" for name, why in kept.items())
    todo = "; ".join(f"for {name}, {STAYS[why]}" for name, why in kept.items())
    return f"Staying: {named}. To make room: {todo}."


def left(deadline: float | None) -> float | None:
    """Seconds to a deadline (at least a moment), or None for none."""
    return None if deadline is None else max(0.001, deadline - time.monotonic())
