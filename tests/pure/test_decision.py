"""The switch decision (core/decision.py): a table of cases, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeld.core.decision import (
    AlreadyRunning,
    Decision,
    Drain,
    Execute,
    JoinLoad,
    NeedPlan,
    Plans,
    Refusal,
    Refuse,
    SwitchFacts,
    WaitForLoads,
    decide_switch,
)
from modeld.core.planner import Infeasible, Plan
from modeld.core.states import State

FITS = Plan(stop=(), device=0, required_gb=40, available_before_gb=60, freed_gb=0)
STOPS_B = Plan(stop=("b",), device=0, required_gb=40, available_before_gb=20, freed_gb=30)
PARKS_C = Plan(stop=(), park=("c",), device=0, required_gb=40, available_before_gb=20, freed_gb=30)
NO_ROOM = Infeasible(device=0, required_gb=90, available_gb=20, freed_gb=30, total_available_gb=50)

S = State


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        # Running: nothing to do, whatever the plans; loading: join, never a second start.
        (SwitchFacts(S.RUNNING, evict=True), AlreadyRunning()),
        (SwitchFacts(S.LOADING, evict=False), JoinLoad()),
        # Down and not yet planned: read the GPU and plan (a failed backend cleared first).
        (SwitchFacts(S.STOPPED, evict=True), NeedPlan(clear_failed=False)),
        (SwitchFacts(S.SLEEPING, evict=True), NeedPlan(clear_failed=False)),
        (SwitchFacts(S.FAILED, evict=True), NeedPlan(clear_failed=True)),
        # It fits: go.
        (SwitchFacts(S.STOPPED, evict=False, plans=Plans(FITS)), Execute(FITS)),
        (SwitchFacts(S.STOPPED, evict=True, plans=Plans(STOPS_B)), Execute(STOPS_B)),
        (SwitchFacts(S.SLEEPING, evict=True, plans=Plans(PARKS_C)), Execute(PARKS_C)),
        # `start` never evicts: refused, naming the plan it would have needed.
        (
            SwitchFacts(S.STOPPED, evict=False, plans=Plans(STOPS_B)),
            Refuse(Refusal.WOULD_EVICT, STOPS_B),
        ),
        (
            SwitchFacts(S.STOPPED, evict=False, plans=Plans(PARKS_C)),
            Refuse(Refusal.WOULD_EVICT, PARKS_C),
        ),
        # No room while other loads are in flight: wait for one, then decide again.
        (
            SwitchFacts(S.STOPPED, evict=True, plans=Plans(NO_ROOM, STOPS_B), others_loading=True),
            WaitForLoads(),
        ),
        # Room once a model serving requests drains: drain it (only the protected ones).
        (
            SwitchFacts(S.STOPPED, evict=True, plans=Plans(NO_ROOM, STOPS_B), protected={"b"}),
            Drain(("b",)),
        ),
        # The drained plan stops only unprotected models: draining would not help.
        (
            SwitchFacts(S.STOPPED, evict=True, plans=Plans(NO_ROOM, STOPS_B), protected={"x"}),
            Refuse(Refusal.NO_ROOM, NO_ROOM),
        ),
        # Forced, or no room even with drains: refused with the planner's numbers.
        (
            SwitchFacts(S.STOPPED, evict=True, force=True, plans=Plans(NO_ROOM), protected={"b"}),
            Refuse(Refusal.NO_ROOM, NO_ROOM),
        ),
        (
            SwitchFacts(S.STOPPED, evict=True, plans=Plans(NO_ROOM, NO_ROOM), protected={"b"}),
            Refuse(Refusal.NO_ROOM, NO_ROOM),
        ),
    ],
)
def test_the_decision_table(facts: SwitchFacts, expected: Decision) -> None:
    """Each situation gets the one outcome the design describes."""
    assert decide_switch(facts) == expected


names = st.sampled_from(["a", "b", "c", "d"])
plans = st.one_of(
    st.just(NO_ROOM),
    st.builds(
        Plan,
        stop=st.lists(names, unique=True, max_size=3).map(tuple),
        device=st.just(0),
        required_gb=st.just(40.0),
        available_before_gb=st.just(10.0),
        freed_gb=st.just(30.0),
        park=st.lists(names, unique=True, max_size=2).map(tuple),
    ),
)


@given(
    state=st.sampled_from(list(State)),
    evict=st.booleans(),
    force=st.booleans(),
    plan=plans,
    drained=st.one_of(st.none(), plans),
    others_loading=st.booleans(),
    protected=st.sets(names),
)
def test_the_decision_never_oversteps(
    state: State,
    evict: bool,
    force: bool,
    plan: Plan | Infeasible,
    drained: Plan | Infeasible | None,
    others_loading: bool,
    protected: set[str],
) -> None:
    """Whatever the facts: a plan is executed only if feasible, and by `switch` only if it
    moves anyone; a drain names only models serving requests, never when forced; a
    refusal or execution carries the planner's own plan."""
    facts = SwitchFacts(state, evict, force, Plans(plan, drained), others_loading, protected)
    decision = decide_switch(facts)
    if isinstance(decision, Execute):
        assert decision.plan is plan
        assert evict or not (plan.stop or plan.park)
    if isinstance(decision, Drain):
        assert not force and decision.busy and set(decision.busy) <= protected
        assert isinstance(plan, Infeasible) and not others_loading
    if isinstance(decision, Refuse):
        assert decision.plan is plan
    if isinstance(decision, WaitForLoads):
        assert others_loading and isinstance(plan, Infeasible)
    if state in (State.RUNNING, State.LOADING):
        assert isinstance(decision, AlreadyRunning | JoinLoad)
