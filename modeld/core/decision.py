"""The switch decision: a pure function of plain facts returning a typed outcome.

What to do to bring a model up is decided here, without I/O or logging; the engine
(switching.py) gathers the facts, carries the outcome out, and turns a refusal into the
error the API reports. Planning (who to stop or park) is the planner's: its two plans
arrive here as facts, one honouring the models serving requests and one without them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from modeld.core.planner import Infeasible, Plan
from modeld.core.states import State


@dataclass(frozen=True)
class Plans:
    """What the planner said: honouring leases (`plan`), and, unless forced, ignoring
    them (`drained`: would it fit once the models serving requests were drained?)."""

    plan: Plan | Infeasible
    drained: Plan | Infeasible | None = None


@dataclass(frozen=True)
class SwitchFacts:
    """Everything the decision reads. `plans` is None until the engine has read the GPU
    and planned (a running or loading target needs neither)."""

    state: State
    evict: bool
    force: bool = False
    plans: Plans | None = None
    others_loading: bool = False
    protected: Collection[str] = ()
    # Models with nothing in flight but a standing lease held: drained before they move.
    standing: Collection[str] = ()


@dataclass(frozen=True)
class AlreadyRunning:
    """It runs and answers: nothing to do."""


@dataclass(frozen=True)
class JoinLoad:
    """It is loading already: wait for that load, never start a second backend."""


@dataclass(frozen=True)
class NeedPlan:
    """Read the GPU and plan (after clearing a failed backend), then decide again."""

    clear_failed: bool


@dataclass(frozen=True)
class WaitForLoads:
    """It fits only once loads in flight end (a loading model is never evicted): wait for
    one outside the lock, then decide again."""


@dataclass(frozen=True)
class Drain:
    """It fits once these models, serving requests, have drained: drain them outside
    the lock, then decide again."""

    busy: tuple[str, ...]


class Refusal(StrEnum):
    """Why a switch or start is refused, changing nothing."""

    # Not even stopping every model that may be stopped makes room.
    NO_ROOM = "no_room"
    # `start` never stops or parks anything, and this would have to.
    WOULD_EVICT = "would_evict"


@dataclass(frozen=True)
class Refuse:
    """Refused, with the planner's numbers to say why."""

    reason: Refusal
    plan: Plan | Infeasible


@dataclass(frozen=True)
class Execute:
    """Stop and park what the plan says, then start (or wake) the target."""

    plan: Plan


Decision = AlreadyRunning | JoinLoad | NeedPlan | WaitForLoads | Drain | Refuse | Execute


def decide_switch(facts: SwitchFacts) -> Decision:
    """What to do to bring the target up, given what is known of it and of the plans."""
    if facts.state is State.RUNNING:
        return AlreadyRunning()
    if facts.state is State.LOADING:
        return JoinLoad()
    if facts.plans is None:
        return NeedPlan(clear_failed=facts.state is State.FAILED)
    plan = facts.plans.plan
    if isinstance(plan, Infeasible):
        if facts.others_loading:
            return WaitForLoads()
        drained = facts.plans.drained
        if not facts.force and drained is not None and not isinstance(drained, Infeasible):
            busy = tuple(n for n in (*drained.stop, *drained.park) if n in facts.protected)
            if busy:
                return Drain(busy)
        return Refuse(Refusal.NO_ROOM, plan)
    if (plan.stop or plan.park) and not facts.evict:
        return Refuse(Refusal.WOULD_EVICT, plan)
    held = tuple(n for n in (*plan.stop, *plan.park) if n in facts.standing)
    if held and not facts.force:
        return Drain(held)
    return Execute(plan)
