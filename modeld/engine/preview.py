"""A dry run of a switch: the same facts and the same pure decision a switch makes, read
now and carried out never. Nothing here stops a failed backend, takes the lock or
counts demand: the answer may differ from the switch that follows only by what changes
in between."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modeld.adapters.gpu.base import GpuReading
from modeld.core.decision import (
    AlreadyRunning,
    Decision,
    Drain,
    Execute,
    JoinLoad,
    NeedPlan,
    Plans,
    Refuse,
    SwitchFacts,
    WaitForLoads,
    decide_switch,
)
from modeld.core.planner import Infeasible, Plan
from modeld.core.states import State
from modeld.core.units import about
from modeld.engine.leases import Leases
from modeld.engine.lifecycle import Lifecycle
from modeld.engine.model import Model
from modeld.engine.room import staying, why_no_room
from modeld.wire.results import MemoryInfo, PlanAction, PlanCandidate, PlanResult


def memory_info(life: Lifecycle, record: Model, plan: Plan) -> MemoryInfo:
    """The memory figures of a plan, as a switch answers them."""
    return MemoryInfo(
        required_gb=round(plan.required_gb, 1),
        available_before_gb=round(plan.available_before_gb, 1),
        freed_gb=round(plan.freed_gb, 1),
        device=plan.device,
        source=life.ledger.need(record).source.value,
        per_device={
            str(d): {k: round(v, 1) for k, v in figures.items()}
            for d, figures in plan.per_device.items()
        },
    )


async def decide_with_plans(
    life: Lifecycle, leases: Leases, record: Model, evict: bool, force: bool
) -> tuple[Decision, list[Model], GpuReading, Callable[[str], bool]]:
    """The switch's decision once it needs a plan: read the GPU, plan (and plan as if the
    busy models were drained), and decide; with what it was decided from."""
    records = list(life.records.values())
    reading = await life.ledger.read(records)
    protected: Callable[[str], bool] = (lambda _: False) if force else leases.protected
    plan = life.ledger.plan(record, records, reading, protected)
    drained = None
    if isinstance(plan, Infeasible) and not force:
        drained = life.ledger.plan(record, records, reading)
    others_loading = any(
        r is not record and r.state is State.LOADING and r.load_task is not None for r in records
    )
    busy = {r.name for r in records if protected(r.name)}
    facts = SwitchFacts(record.state, evict, force, Plans(plan, drained), others_loading, busy)
    return decide_switch(facts), records, reading, protected


async def preview_switch(
    life: Lifecycle, leases: Leases, record: Model, force: bool = False
) -> PlanResult:
    """What `switch` would do to bring `record` up now, with the planner's figures."""
    policy = life.config.daemon.eviction_policy
    name = record.name
    decision = decide_switch(SwitchFacts(record.state, True, force))
    if isinstance(decision, AlreadyRunning):
        return PlanResult(
            model=name, action="none", message=f"{name} is already running", policy=policy
        )
    if isinstance(decision, JoinLoad):
        return PlanResult(
            model=name,
            action="join_load",
            message=f"{name} is loading already: a switch waits for that load",
            estimated_seconds=round(record.load_estimate_s(), 1),
            policy=policy,
        )
    assert isinstance(decision, NeedPlan), decision
    gathered = await decide_with_plans(life, leases, record, True, force)
    decision, records, reading, protected = gathered
    _, _, candidates = life.ledger.plan_inputs(record, records, reading, protected)
    weighed = [
        PlanCandidate(
            name=c.name,
            held_gb=round(sum(c.held_gb.values()), 1),
            reload_seconds=round(c.reload_s, 1),
            demand=round(c.demand, 3),
            movable=not c.pinned,
            can_park=c.can_park,
        )
        for c in candidates
    ]

    def answer(action: PlanAction, message: str, **extra: Any) -> PlanResult:
        return PlanResult(
            model=name, policy=policy, candidates=weighed, action=action, message=message, **extra
        )

    waking = record.state is State.SLEEPING
    match decision:
        case Execute(plan=chosen):
            seconds = record.wake_estimate()[0] if waking else record.load_estimate_s()
            verb = "wake" if waking else "start"
            moves = [f"stop {', '.join(chosen.stop)}"] if chosen.stop else []
            moves += [f"park {', '.join(chosen.park)}"] if chosen.park else []
            steps = "; ".join(moves) if moves else "it fits as is"
            return answer(
                "wake" if waking else "start",
                f"{steps}; then {verb} {name} ({about(seconds)})",
                stop=list(chosen.stop),
                park=list(chosen.park),
                memory_info=memory_info(life, record, chosen),
                estimated_seconds=round(seconds, 1),
            )
        case WaitForLoads():
            return answer(
                "wait_for_loads",
                "loads in flight hold the memory it needs: a switch waits for them, "
                "then plans again",
            )
        case Drain(busy=held):
            return answer(
                "drain",
                f"{', '.join(held)} serve requests: a switch waits for them to end "
                "(drain_timeout_s), then stops them",
                busy=list(held),
            )
        case Refuse(plan=Infeasible() as no_room):
            return answer(
                "refuse",
                f"no room on GPU {no_room.device}: it needs {no_room.required_gb:.1f} GB, "
                f"{no_room.total_available_gb:.1f} GB at most once every movable model is "
                f"gone. {why_no_room(staying(life.records, no_room.blocked_by))}",
            )
    raise AssertionError(f"undecided: {decision!r}")
