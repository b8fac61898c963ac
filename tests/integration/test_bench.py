"""Each benchmark still runs (quick mode); no timing is asserted here, only that every
figure was measured and written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "bench",
    [
        "rpc",
        "memory_wait",
        "parking",
        "leases",
        "gateway",
        "footprint",
        "hostile",
        "pressure",
        "traces",
        "reliability",
        "chunk_cost",
    ],
)
def test_bench_runs_quick(bench: str) -> None:
    """`python -m bench.NAME --quick` exits 0 and reports its figures with targets."""
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "target" in result.stdout
    assert '"figures": [{' in result.stdout


def test_switch_overhead_runs_quick(image: str) -> None:
    """The Docker benchmark runs against the real engine (quick mode)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.switch_overhead", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "switch overhead" in result.stdout


def test_runner_writes_results(tmp_path: Path) -> None:
    """`python -m bench.run --quick --only rpc` writes the machine and rpc's figures, and
    keeps what it did not run: the other benches' rows and notes, and the hand-written
    comparisons below the table."""
    output = tmp_path / "RESULTS.md"
    earlier_row = "| traces | cost_aware: load seconds / optimum | 1.1 x | 1.2 | 0.1 |  |  |  |"
    earlier_note = "- traces / cost_aware: load seconds / optimum: from before"
    kept = "## Before and after\n\nwritten by hand\n"
    stale_rpc = "| rpc | status, 4 models | 9 us | 9 | 0 |  |  |  |"
    output.write_text(
        f"# old\n\n| bench | figure |\n|---|---|\n{stale_rpc}\n{earlier_row}\n\n"
        f"Notes:\n\n{earlier_note}\n\n{kept}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "rpc", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert "machine:" in text
    assert "| rpc | status, 4 models |" in text and stale_rpc not in text
    assert "| rpc | status, 64 models |" in text
    assert earlier_row in text and earlier_note in text
    assert "Rows of traces: from an earlier run" in text
    assert text.endswith(kept)


def test_trace_optimum_bounds_every_policy() -> None:
    """The offline optimum is never beaten, and matches a case worked by hand."""
    from bench.traces import POLICIES, optimum, simulate
    from bench.workload import Model, Scenario, make_scenario
    from modeld.core.planner import Device

    for seed in range(4):
        scenario = make_scenario(seed, 5, 1 + seed % 2, 40)
        best = optimum(scenario)
        assert all(best <= simulate(scenario, policy) + 1e-9 for policy in POLICIES)
    # Two 50 GB models on 80 GB alternate: every request is a cold load.
    models = {n: Model(n, {0: 50.0}, 10.0) for n in ("a", "b")}
    worst = Scenario("alternating", models, (Device(0, 80, 80),), ("a", "b", "a", "b"))
    assert optimum(worst) == 40.0
    # With 40 GB each both fit: only the first two requests load.
    small = {n: Model(n, {0: 40.0}, 10.0) for n in ("a", "b")}
    assert optimum(Scenario("fits", small, (Device(0, 80, 80),), ("a", "b", "a", "b"))) == 20.0


def test_bounds_learn_popularity_and_never_beat_the_optimum() -> None:
    """The bounds' odds are distributions; the exact filter learns a steady favourite;
    neither bound beats the offline optimum."""
    from bench.bounds import filtered_odds
    from bench.traces import optimum, simulate
    from bench.workload import Scenario, make_scenario

    scenario = make_scenario(7, 5, 1, 60)
    filtered = filtered_odds(scenario)
    for odds in (*scenario.odds, *filtered):
        assert abs(sum(odds.values()) - 1.0) < 1e-9
    best = optimum(scenario)
    assert best <= simulate(scenario, "cost_aware", list(scenario.odds)) + 1e-9
    assert best <= simulate(scenario, "cost_aware", filtered) + 1e-9
    # Forty requests for m3 alone: the filter ranks it first, near the top rank's share.
    steady = Scenario("steady", scenario.models, scenario.devices, ("m3",) * 40)
    last = filtered_odds(steady)[-1]
    assert max(last, key=last.__getitem__) == "m3"
    assert last["m3"] > 0.9 * max(scenario.odds[0].values())
