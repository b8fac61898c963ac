"""History: why a model was evicted at 14:02 is answered after the fact, and after a
restart of the daemon."""

from __future__ import annotations

import pytest

from modeld.adapters.store import HISTORY_KEPT
from modeld.core.errors import UnknownModel
from tests.support import EngineFactory, make_config, start_over

THREE = {
    "alpha": {"gpu_memory_gb": 30, "size_gb": 35},
    "beta": {"gpu_memory_gb": 25, "size_gb": 29},
    "gamma": {"gpu_memory_gb": 30, "size_gb": 35},
}


async def test_an_eviction_is_told_with_its_reason_and_the_plan_behind_it(
    engines: EngineFactory,
) -> None:
    """Switching to gamma evicts alpha: alpha's history says `stopped (evicted for
    gamma)`; gamma's holds the plan (who went, the memory counted, the policy), then its
    load with how long it took."""
    engine, _, _ = await engines(make_config(THREE, [60]))
    for name in ("alpha", "beta", "gamma"):
        await engine.models.switch(name)
    alpha = engine.models.history("alpha")
    assert (alpha[-1].from_state, alpha[-1].to_state) == ("stopping", "stopped")
    assert alpha[-1].reason == "evicted for gamma"
    gamma = engine.models.history("gamma")
    plan = next(e for e in gamma if e.kind == "plan")
    assert plan.stop == ["alpha"] and plan.required_gb == 30
    assert plan.available_before_gb == 5 and plan.policy == "largest_first"
    assert plan.reason == "stop alpha: needs 30.0 GB on GPU 0, 5.0 GB free (largest_first)"
    ran = gamma[-1]
    assert ran.to_state == "running" and ran.seconds is not None
    everything = engine.models.history()
    assert [e.at for e in everything] == sorted(e.at for e in everything)
    assert {e.model for e in everything} == {"alpha", "beta", "gamma"}
    assert len(engine.models.history(limit=2)) == 2
    with pytest.raises(UnknownModel):
        engine.models.history("nope")


async def test_the_history_outlives_a_restart_and_stays_bounded(engines: EngineFactory) -> None:
    """A new daemon on the same state dir still knows why alpha was stopped; the history
    keeps the latest HISTORY_KEPT entries, not more."""
    config = make_config(THREE, [60])
    engine, runtime, gpu = await engines(config)
    await engine.models.switch("alpha")
    await engine.models.stop("alpha")
    await engine.shutdown()
    again = await start_over(config, runtime, gpu)
    try:
        told = again.models.history("alpha")
        assert told[-1].to_state == "stopped" and told[-1].reason
        for _ in range(HISTORY_KEPT // 4 + 5):  # four entries a round
            await again.models.switch("beta")
            await again.models.stop("beta")
        kept = again.models.history(limit=500)
        assert len(kept) == HISTORY_KEPT
        assert all(e.model == "beta" for e in kept)
    finally:
        await again.shutdown()
