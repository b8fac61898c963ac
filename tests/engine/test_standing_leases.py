"""Standing leases, as the daemon keeps them: the holder's count of requests in flight is
what status shows, a standing lease protects its model while held whatever its count (a
switch that needs the model drains it, and without its holder letting go is refused
having stopped nothing), its served requests count as demand as that many acquires
would, and cut-off requests are a crash loop's evidence."""

from __future__ import annotations

import pytest

from modeld.core.errors import ModelsBusy, UnknownLease
from modeld.core.states import State
from modeld.engine.engine import Engine
from tests.support import EngineFactory, make_config, next_of, state_of

TWO = {"a": {"gpu_memory_gb": 50}, "b": {"gpu_memory_gb": 50}}
OWNER = 3


async def test_the_holders_count_is_status_and_a_held_lease_is_drained_before_a_switch(
    engines: EngineFactory,
) -> None:
    """In flight 3, then 0: status says so; with 0 in flight the lease still protects
    `a`: a switch to `b` says `drain` and is refused at its timeout having stopped
    nothing; given back, the switch goes through."""
    engine, _, _ = await engines(make_config(TWO, [80], drain_timeout_s=0.3))
    granted = await engine.leases.acquire("a", owner=OWNER, standing=True)
    engine.leases.update(granted.lease, owner=OWNER, in_flight=3, served=2)
    assert engine.view.status().models["a"].leases == 3
    engine.leases.update(granted.lease, owner=OWNER, in_flight=0)
    assert engine.view.status().models["a"].leases == 0
    events = engine.events.subscribe()
    with pytest.raises(ModelsBusy):
        await engine.models.switch("b")
    await next_of(events, "drain", model="a")
    assert state_of(engine, "a") is State.RUNNING
    engine.leases.release(granted.lease, owner=OWNER)
    assert (await engine.models.switch("b")).state == "running"
    assert state_of(engine, "a") is State.STOPPED


async def test_only_a_standing_lease_of_ones_own_takes_counts(engines: EngineFactory) -> None:
    """An ordinary lease, or another connection's, is not updated."""
    engine, _, _ = await engines(make_config(TWO, [80]))
    plain = await engine.leases.acquire("a", owner=OWNER)
    with pytest.raises(UnknownLease, match="not a standing lease"):
        engine.leases.update(plain.lease, owner=OWNER, in_flight=5)
    standing = await engine.leases.acquire("a", owner=OWNER, standing=True)
    with pytest.raises(UnknownLease):
        engine.leases.update(standing.lease, owner=OWNER + 1, in_flight=5)
    assert engine.view.status().models["a"].leases == 2


async def demands(engine: Engine) -> dict[str, float]:
    """Each running model's demand, as the planner weighs it (`plan`'s candidates)."""
    plan = await engine.models.plan("c")
    return {candidate.name: candidate.demand for candidate in plan.candidates}


async def test_served_requests_count_as_demand_as_that_many_acquires_would(
    engines: EngineFactory,
) -> None:
    """cost_aware's demand after a standing lease reports 7 served requests of `a` is what
    7 more acquires of `a` leave, and `b`'s decays as much."""
    three = {**TWO, "c": {"gpu_memory_gb": 100}}
    hosts = []
    for _ in range(2):
        engine, _, _ = await engines(make_config(three, [160], eviction_policy="cost_aware"))
        await engine.models.switch("b")
        hosts.append(engine)
    reported, counted = hosts
    granted = await reported.leases.acquire("a", owner=OWNER, standing=True)
    reported.leases.update(granted.lease, owner=OWNER, in_flight=0, served=7)
    for _ in range(8):
        lease = await counted.leases.acquire("a", owner=OWNER)
        counted.leases.release(lease.lease, owner=OWNER)
    one, other = await demands(reported), await demands(counted)
    assert set(one) == {"a", "b"}
    for name in one:
        assert one[name] == pytest.approx(other[name], abs=1e-3)
