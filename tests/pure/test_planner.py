"""The switch planner: seed-table cases on 80 GB and 141 GB GPUs, and properties."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeld.core.config import EvictionPolicy
from modeld.core.planner import Candidate, Device, Infeasible, Plan, Target, plan_switch

# The seed's model table: name -> size_gb.
SEED = {
    "gpt-oss-120b": 183,
    "gpt-oss-20b": 40,
    "deepseek-coder-33b-instruct": 43,
    "mistral-7b-v0.1": 7,
}
# vLLM utilization an operator would give each on one GPU.
UTILIZATION = {
    "gpt-oss-120b": 0.90,
    "gpt-oss-20b": 0.45,
    "deepseek-coder-33b-instruct": 0.50,
    "mistral-7b-v0.1": 0.20,
}


def seed_estimate(name: str) -> float:
    """The seed's own figure: size x 0.85."""
    return SEED[name] * 0.85


def scenario(
    total: float,
    running: list[str],
    target: str,
    need: dict[str, float],
    pinned: frozenset[str] = frozenset(),
    last_used: dict[str, float] | None = None,
) -> tuple[Target, list[Device], list[Candidate]]:
    """One device of `total` GB holding `running`, as the planner sees it."""
    used = sum(need[name] for name in running)
    candidates = [
        Candidate(
            name, {0: need[name]}, SEED[name], (last_used or {}).get(name, 0.0), name in pinned
        )
        for name in running
    ]
    return Target(target, {0: need[target]}), [Device(0, total, total - used)], candidates


ESTIMATED = {name: seed_estimate(name) for name in SEED}


def utilization_needs(total: float) -> dict[str, float]:
    """vLLM's real rule: utilization x device total, whatever the model's size."""
    return {name: u * total for name, u in UTILIZATION.items()}


@pytest.mark.parametrize(
    ("total", "running", "target", "expected"),
    [
        # Fits already: stop nothing (the seed's fast path).
        (80, ["gpt-oss-20b", "mistral-7b-v0.1"], "deepseek-coder-33b-instruct", ()),
        (80, ["gpt-oss-20b", "deepseek-coder-33b-instruct"], "mistral-7b-v0.1", ()),
        # 141 GB holds all three smaller models at the seed's estimates.
        (141, ["gpt-oss-20b", "deepseek-coder-33b-instruct"], "mistral-7b-v0.1", ()),
        # Largest first: deepseek (36.6) goes before 20b (34.0).
        (80, ["gpt-oss-20b", "deepseek-coder-33b-instruct", "mistral-7b-v0.1"], "gpt-oss-20b", ()),
    ],
)
def test_seed_table_estimates_fit(
    total: float, running: list[str], target: str, expected: tuple[str, ...]
) -> None:
    """With the seed's estimates, targets that fit stop nothing."""
    running = [r for r in running if r != target]
    plan = plan_switch(*scenario(total, running, target, ESTIMATED), "largest_first")
    assert isinstance(plan, Plan)
    assert plan.stop == expected


def test_seed_infeasible_numbers_on_80gb() -> None:
    """120B at the seed's estimate cannot fit 80 GB: the answer carries the seed's numbers."""
    plan = plan_switch(
        *scenario(80, ["gpt-oss-20b", "deepseek-coder-33b-instruct"], "gpt-oss-120b", ESTIMATED),
        "largest_first",
    )
    assert isinstance(plan, Infeasible)
    assert plan.required_gb == pytest.approx(155.55)
    assert plan.available_gb == pytest.approx(80 - 34 - 36.55)
    assert plan.freed_gb == pytest.approx(70.55)
    assert plan.total_available_gb == pytest.approx(80)


def test_seed_infeasible_on_141gb_too() -> None:
    """At 183 GB x 0.85 the 120B model does not fit an H200 either, however much is stopped."""
    plan = plan_switch(*scenario(141, ["mistral-7b-v0.1"], "gpt-oss-120b", ESTIMATED), "fewest")
    assert isinstance(plan, Infeasible)
    assert plan.total_available_gb == pytest.approx(141)


@pytest.mark.parametrize(
    ("total", "policy", "last_used", "expected"),
    [
        (80, "largest_first", {}, ("deepseek-coder-33b-instruct",)),
        (80, "lru", {"gpt-oss-20b": 1.0, "deepseek-coder-33b-instruct": 2.0}, ("gpt-oss-20b",)),
        (
            80,
            "lru",
            {"gpt-oss-20b": 2.0, "deepseek-coder-33b-instruct": 1.0},
            ("deepseek-coder-33b-instruct",),
        ),
        # One model either way; fewest takes the one that frees the least.
        (80, "fewest", {}, ("gpt-oss-20b",)),
        (141, "largest_first", {}, ("deepseek-coder-33b-instruct",)),
        (141, "fewest", {}, ("gpt-oss-20b",)),
    ],
)
def test_policies_under_vllm_utilization(
    total: float, policy: EvictionPolicy, last_used: dict[str, float], expected: tuple[str, ...]
) -> None:
    """20B + DeepSeek fill the GPU; Mistral needs one of them stopped, chosen by policy."""
    plan = plan_switch(
        *scenario(
            total,
            ["gpt-oss-20b", "deepseek-coder-33b-instruct"],
            "mistral-7b-v0.1",
            utilization_needs(total),
            last_used=last_used,
        ),
        policy,
    )
    assert isinstance(plan, Plan)
    assert plan.stop == expected
    assert plan.required_gb == pytest.approx(0.20 * total)
    assert plan.available_before_gb == pytest.approx(total * 0.05)


def test_120b_on_80gb_stops_both_smaller_models() -> None:
    """At 0.9 utilization the 120B needs 72 GB: 20B and Mistral must both go."""
    plan = plan_switch(
        *scenario(80, ["gpt-oss-20b", "mistral-7b-v0.1"], "gpt-oss-120b", utilization_needs(80)),
        "largest_first",
    )
    assert isinstance(plan, Plan)
    assert set(plan.stop) == {"gpt-oss-20b", "mistral-7b-v0.1"}
    assert plan.freed_gb == pytest.approx(52)


def test_pinned_model_is_never_stopped() -> None:
    """A pinned 20B stays; the planner stops DeepSeek even under `fewest`."""
    plan = plan_switch(
        *scenario(
            80,
            ["gpt-oss-20b", "deepseek-coder-33b-instruct"],
            "mistral-7b-v0.1",
            utilization_needs(80),
            pinned=frozenset({"gpt-oss-20b"}),
        ),
        "fewest",
    )
    assert isinstance(plan, Plan)
    assert plan.stop == ("deepseek-coder-33b-instruct",)


def test_pinned_model_blocking_is_reported() -> None:
    """When only a pinned model stands in the way the answer says which."""
    plan = plan_switch(
        *scenario(
            80,
            ["gpt-oss-20b", "deepseek-coder-33b-instruct"],
            "gpt-oss-120b",
            utilization_needs(80),
            pinned=frozenset({"gpt-oss-20b"}),
        ),
        "largest_first",
    )
    assert isinstance(plan, Infeasible)
    assert plan.blocked_by == ("gpt-oss-20b",)


def test_multi_device_target_needs_room_on_every_device() -> None:
    """A tensor-parallel target stops only what frees its devices; a model on GPU 2 stays."""
    devices = [Device(0, 80, 10), Device(1, 80, 50), Device(2, 80, 0)]
    running = [
        Candidate("on-0", {0: 30}),
        Candidate("on-0-and-1", {0: 35, 1: 20}),
        Candidate("on-2", {2: 80}, size_gb=500),
    ]
    plan = plan_switch(Target("tp", {0: 40, 1: 40}), devices, running, "largest_first")
    assert isinstance(plan, Plan)
    assert plan.stop == ("on-0-and-1",)


def test_prune_keeps_models_the_plan_can_do_without() -> None:
    """Greedy picks the biggest first, then drops it if a later pick alone suffices."""
    devices = [Device(0, 80, 0), Device(1, 80, 0)]
    running = [Candidate("big-on-0", {0: 60}), Candidate("both", {0: 30, 1: 30})]
    plan = plan_switch(Target("t", {0: 20, 1: 20}), devices, running, "largest_first")
    assert isinstance(plan, Plan)
    assert plan.stop == ("both",)


# ---- properties ----------------------------------------------------------------------

POLICIES: list[EvictionPolicy] = ["largest_first", "lru", "fewest", "cost_aware"]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Target, list[Device], list[Candidate], EvictionPolicy]:
    """A random host: devices, models holding memory on some of them, and a target."""
    count = draw(st.integers(1, 3))
    totals = [draw(st.floats(10, 200)) for _ in range(count)]
    held_total = [0.0] * count
    candidates = []
    for index in range(draw(st.integers(0, 6))):
        gpus = draw(st.sets(st.integers(0, count - 1), min_size=1))
        held = {}
        for gpu in gpus:
            share = draw(st.floats(0, max(0.0, totals[gpu] - held_total[gpu])))
            held[gpu] = share
            held_total[gpu] += share
        candidates.append(
            Candidate(
                f"m{index}",
                held,
                draw(st.floats(0, 200)),
                draw(st.floats(0, 100)),
                draw(st.booleans()),
                reload_s=draw(st.floats(0, 120)),
                demand=draw(st.floats(0, 10)),
            )
        )
    external = [draw(st.floats(0, totals[i] - held_total[i])) for i in range(count)]
    devices = [Device(i, totals[i], totals[i] - held_total[i] - external[i]) for i in range(count)]
    target_gpus = draw(st.sets(st.integers(0, count - 1), min_size=1))
    target = Target("target", {gpu: draw(st.floats(0.1, totals[gpu])) for gpu in target_gpus})
    return target, devices, candidates, draw(st.sampled_from(POLICIES))


def fits(target: Target, devices: list[Device], stopped: list[Candidate]) -> bool:
    """Reference check, written apart from the planner's own."""
    free = {d.index: d.free_gb for d in devices}
    for gpu, need in target.need_gb.items():
        freed = sum(c.held_gb.get(gpu, 0.0) for c in stopped)
        if free[gpu] + freed + 1e-6 < need:
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_plan_properties(
    world: tuple[Target, list[Device], list[Candidate], EvictionPolicy],
) -> None:
    """Plans fit, spare pinned models, stop nothing needlessly; infeasible only when it is."""
    target, devices, candidates, policy = world
    result = plan_switch(target, devices, candidates, policy)
    stoppable = [c for c in candidates if not c.pinned]
    by_name = {c.name: c for c in candidates}
    if isinstance(result, Infeasible):
        assert not fits(target, devices, stoppable)
        return
    stopped = [by_name[name] for name in result.stop]
    assert fits(target, devices, stopped)
    assert all(not c.pinned for c in stopped)
    assert "target" not in result.stop
    if fits(target, devices, []):
        assert result.stop == ()
    for victim in stopped:
        # Minimal: keeping any one of them would leave the target without room.
        assert not fits(target, devices, [c for c in stopped if c is not victim])
    if policy == "fewest":
        for smaller in range(len(stopped)):
            assert not any(
                fits(target, devices, list(combo)) for combo in combinations(stoppable, smaller)
            )


def test_cost_aware_keeps_the_model_people_ask_for() -> None:
    """cost_aware stops the set whose expected reload cost is least, chosen jointly: two
    rarely used small models rather than one popular big one."""
    devices = [Device(0, 80, 0)]
    running = [
        Candidate("popular", {0: 40}, reload_s=60, demand=5.0),
        Candidate("rare-1", {0: 20}, reload_s=10, demand=0.2),
        Candidate("rare-2", {0: 20}, reload_s=20, demand=0.1),
    ]
    target = Target("t", {0: 40})
    plan = plan_switch(target, devices, running, "cost_aware")
    assert isinstance(plan, Plan)
    assert sorted(plan.stop) == ["rare-1", "rare-2"]
    largest = plan_switch(target, devices, running, "largest_first")
    assert isinstance(largest, Plan)
    assert largest.stop == ("popular",)


# ---- sleep-mode parking ----------------------------------------------------------------


def parkable(name: str, held: float, reload_s: float, demand: float, wake_s: float) -> Candidate:
    """A running sleep-mode model on device 0 that keeps 2 GB once parked."""
    return Candidate(
        name,
        {0: held},
        reload_s=reload_s,
        demand=demand,
        can_park=True,
        residual_gb={0: 2.0},
        park_ram_gb=held,
        wake_s=wake_s,
    )


def test_cost_aware_parks_rather_than_stops_when_a_wake_is_cheaper() -> None:
    """Parking frees all but the residual and costs a wake, not a cold load: chosen."""
    plan = plan_switch(
        Target("t", {0: 40}),
        [Device(0, 80, 0)],
        [parkable("a", 40, reload_s=60, demand=1, wake_s=3), Candidate("b", {0: 40})],
        "cost_aware",
        ram_free_gb=100,
    )
    assert isinstance(plan, Plan)
    # b was never asked for: stopping it costs no expected wait, so it goes.
    assert plan.stop == ("b",) and plan.park == ()
    busy_b = Candidate("b", {0: 40}, reload_s=60, demand=1)
    plan = plan_switch(
        Target("t", {0: 30}),
        [Device(0, 80, 0)],
        [parkable("a", 40, reload_s=60, demand=1, wake_s=3), busy_b],
        "cost_aware",
        ram_free_gb=100,
    )
    assert isinstance(plan, Plan)
    assert plan.park == ("a",) and plan.stop == ()


def test_residual_counts_a_park_that_frees_too_little_becomes_a_stop() -> None:
    """The target needs all 40 GB: parking leaves 2 GB behind, so the model is stopped."""
    for policy in POLICIES:
        plan = plan_switch(
            Target("t", {0: 40}),
            [Device(0, 40, 0)],
            [parkable("a", 40, reload_s=60, demand=1, wake_s=3)],
            policy,
            ram_free_gb=100,
        )
        assert isinstance(plan, Plan)
        assert (plan.stop, plan.park) == (("a",), ()), policy


def test_parking_stays_within_the_ram_budget() -> None:
    """Two models could be parked, host RAM holds one: the other is stopped."""
    for policy in POLICIES:
        plan = plan_switch(
            Target("t", {0: 70}),
            [Device(0, 80, 0)],
            [
                parkable("a", 40, reload_s=60, demand=1, wake_s=3),
                parkable("b", 40, reload_s=50, demand=1, wake_s=3),
            ],
            policy,
            ram_free_gb=45,
        )
        assert isinstance(plan, Plan)
        assert len(plan.park) == 1 and len(plan.stop) == 1, policy


def test_stopping_a_parked_model_gives_back_its_ram_for_a_new_park() -> None:
    """A parked model that is rarely wanted is stopped, freeing host RAM to park a
    running one people ask for."""
    old = Candidate("old", {0: 2.0}, reload_s=60, demand=0.1, parked=True, park_ram_gb=40, wake_s=3)
    plan = plan_switch(
        Target("t", {0: 40}),
        [Device(0, 80, 5)],
        [old, parkable("hot", 38, reload_s=60, demand=5, wake_s=3)],
        "cost_aware",
        ram_free_gb=10,
    )
    assert isinstance(plan, Plan)
    assert plan.stop == ("old",) and plan.park == ("hot",)


@st.composite
def parking_worlds(
    draw: st.DrawFn,
) -> tuple[Target, Device, list[Candidate], float, EvictionPolicy]:
    """One device holding running, parkable and parked models, a RAM budget and a policy."""
    total = draw(st.floats(20, 160))
    used = 0.0
    candidates = []
    for index in range(draw(st.integers(1, 6))):
        held = draw(st.floats(0, max(0.0, total - used)))
        used += held
        parked = draw(st.booleans())
        candidates.append(
            Candidate(
                f"m{index}",
                {0: held},
                pinned=draw(st.booleans()),
                reload_s=draw(st.floats(1, 120)),
                demand=draw(st.floats(0, 10)),
                can_park=not parked and draw(st.booleans()),
                parked=parked,
                residual_gb={0: min(held, draw(st.floats(0, 4)))},
                park_ram_gb=draw(st.floats(1, 80)),
                wake_s=draw(st.floats(0.1, 10)),
            )
        )
    target = Target("target", {0: draw(st.floats(0.1, total))})
    ram = draw(st.floats(0, 200))
    return target, Device(0, total, total - used), candidates, ram, draw(st.sampled_from(POLICIES))


@settings(max_examples=300, deadline=None)
@given(parking_worlds())
def test_parking_plan_properties(
    world: tuple[Target, Device, list[Candidate], float, EvictionPolicy],
) -> None:
    """With parking: the target fits once parked models keep their residual, host RAM
    stays within budget, pinned and already-parked models are never parked."""
    target, device, candidates, ram, policy = world
    result = plan_switch(target, [device], candidates, policy, ram_free_gb=ram)
    if isinstance(result, Infeasible):
        return
    by_name = {c.name: c for c in candidates}
    stopped = [by_name[n] for n in result.stop]
    parked = [by_name[n] for n in result.park]
    assert not set(result.stop) & set(result.park)
    assert all(c.can_park and not c.parked and not c.pinned for c in parked)
    assert all(not c.pinned for c in stopped)
    freed = sum(c.held_gb[0] for c in stopped) + sum(
        c.held_gb[0] - c.residual_gb[0] for c in parked
    )
    assert device.free_gb + freed + 1e-6 >= target.need_gb[0]
    ram_used = sum(c.park_ram_gb for c in parked) - sum(c.park_ram_gb for c in stopped if c.parked)
    assert ram_used <= ram + 1e-6
