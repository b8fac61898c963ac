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
from modeld.core.errors import InsufficientMemory
from modeld.core.planner import Infeasible, Plan
from modeld.core.states import State
from modeld.core.units import about
from modeld.engine.backends import Backends
from modeld.engine.leases import Leases
from modeld.engine.model import Model
from modeld.engine.room import staying, why_no_room
from modeld.wire.results import MemoryInfo, PlanAction, PlanCandidate, PlanResult, SwitchResult


def memory_info(backends: Backends, model: Model, plan: Plan) -> MemoryInfo:
    """The memory figures of a plan, as a switch answers them."""
    return MemoryInfo(
        required_gb=round(plan.required_gb, 1),
        available_before_gb=round(plan.available_before_gb, 1),
        freed_gb=round(plan.freed_gb, 1),
        device=plan.device,
        source=backends.ledger.need(model).source.value,
        per_device={
            str(d): {k: round(v, 1) for k, v in figures.items()}
            for d, figures in plan.per_device.items()
        },
    )


async def decide_with_plans(
    backends: Backends, leases: Leases, model: Model, evict: bool, force: bool
) -> tuple[Decision, list[Model], GpuReading, Callable[[str], bool]]:
    """The switch's decision once it needs a plan: read the GPU, plan (and plan as if the
    busy models were drained), and decide; with what it was decided from."""
    models = list(backends.registry.models.values())
    reading = await backends.ledger.read(models)
    protected: Callable[[str], bool] = (lambda _: False) if force else leases.protected
    plan = backends.ledger.plan(model, models, reading, protected)
    drained = None
    if isinstance(plan, Infeasible) and not force:
        drained = backends.ledger.plan(model, models, reading)
    others_loading = any(
        r is not model and r.state is State.LOADING and r.load_task is not None for r in models
    )
    busy = {r.name for r in models if protected(r.name)}
    held = set() if force else {r.name for r in models if leases.standing(r.name)}
    plans = Plans(plan, drained)
    facts = SwitchFacts(model.state, evict, force, plans, others_loading, busy, held - busy)
    return decide_switch(facts), models, reading, protected


async def preview_switch(
    backends: Backends, leases: Leases, model: Model, force: bool = False
) -> PlanResult:
    """What `switch` would do to bring `model` up now, with the planner's figures. For
    an adapter whose base is down: what bringing the base up would do, then its load."""
    base = backends.loras.base_of(model) if model.config.base else None
    if base is None or base.state is State.RUNNING or model.state is not State.STOPPED:
        return await _preview(backends, leases, model, force)
    first = await _preview(backends, leases, base, force)
    estimate = (first.estimated_seconds or 0) + model.load_estimate_s()
    return first.model_copy(
        update={
            "model": model.name,
            "message": f"{first.message}; then {model.name} is loaded into {base.name}",
            "estimated_seconds": round(estimate, 1),
        }
    )


async def _preview(backends: Backends, leases: Leases, model: Model, force: bool) -> PlanResult:
    policy = backends.registry.config.daemon.eviction_policy
    name = model.name
    decision = decide_switch(SwitchFacts(model.state, True, force))
    if isinstance(decision, AlreadyRunning):
        return PlanResult(
            model=name, action="none", message=f"{name} is already running", policy=policy
        )
    if isinstance(decision, JoinLoad):
        return PlanResult(
            model=name,
            action="join_load",
            message=f"{name} is loading already: a switch waits for that load",
            estimated_seconds=round(model.load_estimate_s(), 1),
            policy=policy,
        )
    assert isinstance(decision, NeedPlan), decision
    gathered = await decide_with_plans(backends, leases, model, True, force)
    decision, models, reading, protected = gathered
    _, _, candidates = backends.ledger.plan_inputs(model, models, reading, protected)
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

    waking = model.state is State.SLEEPING
    match decision:
        case Execute(plan=chosen):
            seconds = model.wake_estimate()[0] if waking else model.load_estimate_s()
            verb = "wake" if waking else "start"
            moves = [f"stop {', '.join(chosen.stop)}"] if chosen.stop else []
            moves += [f"park {', '.join(chosen.park)}"] if chosen.park else []
            steps = "; ".join(moves) if moves else "it fits as is"
            return answer(
                "wake" if waking else "start",
                f"{steps}; then {verb} {name} ({about(seconds)})",
                stop=list(chosen.stop),
                park=list(chosen.park),
                memory_info=memory_info(backends, model, chosen),
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
                f"gone. {why_no_room(staying(backends.registry.models, no_room.blocked_by))}",
            )
    raise AssertionError(f"undecided: {decision!r}")


def success_answer(
    model: Model, unloaded: list[str], memory_info: MemoryInfo | None
) -> SwitchResult:
    """The seed's `success` answer, before the outcome of the load is known."""
    return SwitchResult(
        status="success",
        model=model.name,
        unloaded_models=unloaded,
        estimated_load_time_seconds=round(model.load_estimate_s(), 1),
        memory_info=memory_info
        or MemoryInfo(required_gb=None, available_before_gb=None, freed_gb=0),
    )


def would_evict(model: Model, plan: Plan, memory_info: MemoryInfo) -> InsufficientMemory:
    """`start` never stops or parks anything: the refusal, naming who would have to go."""
    touched = ", ".join([*plan.stop, *plan.park])
    return InsufficientMemory(
        f"Not enough free GPU memory to start {model.name} without stopping "
        f"{touched}; use switch to let modeld stop them",
        model=model.name,
        would_stop=list(plan.stop),
        would_park=list(plan.park),
        **memory_info.answer(),
    )
