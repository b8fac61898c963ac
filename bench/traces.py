"""Scheduling quality: seeded request traces replayed through the real planner, each
policy's total cold-load seconds against the exact offline optimum and the seed's
`largest_first`.

Traces: Zipf popularity whose favourites shift over time; 4- and 8-model sets with varied
memory needs (10-50 GB) and load times (5-60 s); one 80 GB GPU, and two 80 GB GPUs with
some models spanning both. The optimum is a dynamic program over the sets of loaded
models (keeping a model loaded costs nothing, so only maximal feasible sets matter).

The issue's figure, on fresh seeds of the calibration kind, is also measured by replaying
the traces through a real Engine (a `switch` per request over the fake runtime and
the simulated GPU, loads scaled down), which must agree with the planner-only replay.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from itertools import combinations

from bench.bounds import filtered_odds
from bench.common import Report, cli, figure
from bench.workload import Scenario, fits, make_scenario
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.vllm import VllmClient
from modeld.core.config import EvictionPolicy, parse_config
from modeld.core.planner import Candidate, Device, Infeasible, Target, plan_switch
from modeld.engine.build import build_engine
from modeld.engine.registry import DEMAND_DECAY
from modeld.service.logs import configure_logging
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.testing.ports import free_port

POLICIES: tuple[EvictionPolicy, ...] = ("largest_first", "lru", "fewest", "cost_aware")
DEFAULT: EvictionPolicy = "cost_aware"


def decayed_demand(scenario: Scenario) -> list[dict[str, float]]:
    """Each model's demand as the daemon counts it, when each request is planned: every
    request decays everyone's by DEMAND_DECAY and counts one for its model."""
    demand = dict.fromkeys(scenario.models, 0.0)
    seen = []
    for name in scenario.trace:
        for other in demand:
            demand[other] *= DEMAND_DECAY
        demand[name] += 1.0
        seen.append(dict(demand))
    return seen


def simulate(
    scenario: Scenario,
    policy: EvictionPolicy,
    demand: Sequence[Mapping[str, float]] | None = None,
) -> float:
    """Total cold-load seconds serving the trace with `policy` through plan_switch; the
    planner sees `demand` per request (by default, the daemon's decayed counts)."""
    seen = decayed_demand(scenario) if demand is None else demand
    loaded: dict[str, int] = {}
    total = 0.0
    for time, name in enumerate(scenario.trace):
        if name in loaded:
            loaded[name] = time
            continue
        used: dict[int, float] = {}
        for held in loaded:
            for device, gb in scenario.models[held].need.items():
                used[device] = used.get(device, 0.0) + gb
        devices = [
            Device(d.index, d.total_gb, d.total_gb - used.get(d.index, 0.0))
            for d in scenario.devices
        ]
        candidates = [
            Candidate(
                held,
                scenario.models[held].need,
                sum(scenario.models[held].need.values()),
                float(last),
                reload_s=scenario.models[held].load_s,
                demand=seen[time][held],
            )
            for held, last in loaded.items()
        ]
        model = scenario.models[name]
        plan = plan_switch(Target(name, model.need), devices, candidates, policy)
        assert not isinstance(plan, Infeasible), "every model fits alone"
        for victim in plan.stop:
            del loaded[victim]
        loaded[name] = time
        total += model.load_s
    return total


def optimum(scenario: Scenario) -> float:
    """The least total cold-load seconds any eviction schedule achieves (knowing the
    future): dynamic programming over maximal feasible sets of loaded models."""
    states: dict[frozenset[str], float] = {frozenset(): 0.0}
    models = scenario.models
    for name in scenario.trace:
        following: dict[frozenset[str], float] = {}
        for loaded, cost in states.items():
            if name in loaded:
                options = [(loaded, cost)]
            else:
                others = sorted(loaded)
                kept: list[frozenset[str]] = []
                for size in range(len(others), -1, -1):
                    for subset in combinations(others, size):
                        keep = frozenset(subset)
                        if any(keep < bigger for bigger in kept):
                            continue
                        if fits([models[n] for n in (*subset, name)], scenario.devices):
                            kept.append(keep)
                options = [(keep | {name}, cost + models[name].load_s) for keep in kept]
            for state, value in options:
                if value < following.get(state, float("inf")):
                    following[state] = value
        states = following
    return min(states.values())


def scenarios(quick: bool) -> list[Scenario]:
    """The bench's traces: 4-, 6- and 8-model sets on one and on two GPUs."""
    length = 60 if quick else 160
    seeds = range(1) if quick else range(2)
    return [
        make_scenario(1000 * count + 10 * gpus + seed, count, gpus, length)
        for count in (4, 6, 8)
        for gpus in (1, 2)
        for seed in seeds
    ]


# Seeds no one tuned on: cost_aware's weights were chosen on the bench's scenarios and
# the calibration set (50_000+); these are drawn only to evaluate.
EVALUATION_SEEDS = range(90_000, 90_024)


def fresh(quick: bool) -> list[Scenario]:
    """Traces of the calibration set's kind on seeds kept apart from tuning."""
    seeds = EVALUATION_SEEDS[:4] if quick else EVALUATION_SEEDS
    return [make_scenario(seed, 6, 1, 60 if quick else 160) for seed in seeds]


def calibration(quick: bool) -> list[Scenario]:
    """The issue's calibration set: 12 traces of 160 requests over six models (10-50 GB,
    reloads 5-60 s) on one 80 GB GPU (seeds apart from the bench's)."""
    return [make_scenario(50_000 + seed, 6, 1, 60 if quick else 160) for seed in range(12)]


# Replaying through the daemon: cold loads last load_s x REPLAY_SCALE seconds. The daemon
# learns reload times from what it measures, so a few ms of event-loop jitter (24 daemons
# on 2 cores) must stay small beside the shortest load: at 0.01x a 5 s load is 50 ms and
# the worst trace swung from 1.42x to 1.67x between runs; at 0.03x it stays near the
# planner-only replay. The quick (smoke) run keeps 0.01x.
REPLAY_SCALE = 0.03
QUICK_REPLAY_SCALE = 0.01


async def replay(scenario: Scenario, policy: EvictionPolicy, scale: float = REPLAY_SCALE) -> float:
    """Total cold-load seconds (at the trace's scale) serving the trace through a real
    Engine: `switch` per request, on the simulated GPU and the fake runtime, each
    backend taking its load time (scaled down) to answer /health."""
    tables = {
        name: {
            "runtime": "process",
            "command": ["unused"],
            "endpoint": f"http://127.0.0.1:{free_port()}",
            "gpus": sorted(model.need),
            "gpu_memory_gb": max(model.need.values()),
            "load_time_seconds": model.load_s,
            "load_timeout_s": 60,
        }
        for name, model in scenario.models.items()
    }
    with tempfile.TemporaryDirectory(prefix="modeld-replay-") as state:
        config = parse_config(
            {
                "daemon": {
                    "state_dir": state,
                    "eviction_policy": policy,
                    "poll_interval_s": 3600,
                    "health_poll_interval_s": 0.002,
                    "memory_poll_interval_s": 0.002,
                },
                "gpu": {
                    "backend": "simulated",
                    "devices_gb": [d.total_gb for d in scenario.devices],
                    "release_delay_s": 0.0,
                },
                "models": tables,
            }
        )
        runtime = FakeRuntime()
        for name, model in scenario.models.items():
            runtime.behaviour[name] = Behaviour(load_seconds=model.load_s * scale)
        gpu = SimulatedGpu(config.gpu, alive=runtime.alive)
        runtime.gpu = gpu
        engine = await build_engine(
            config, gpu=gpu, runtimes={"process": runtime}, vllm=VllmClient(timeout_s=5)
        )
        await engine.startup()
        try:
            for name in scenario.trace:
                await engine.models.switch(name)
        finally:
            await engine.shutdown()
    return sum(runtime.starts(name) * model.load_s for name, model in scenario.models.items())


async def replay_all(
    traces: list[Scenario], policy: EvictionPolicy, scale: float = REPLAY_SCALE
) -> list[float]:
    """Each trace through its own daemon, all at once (they only wait on timers)."""
    return list(await asyncio.gather(*(replay(trace, policy, scale) for trace in traces)))


def _compare(traces: list[Scenario]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per policy, each trace's load seconds over the optimum's and over largest_first's;
    under "optimum", the optimum's own ratio to largest_first."""
    ratios: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    versus_seed: dict[str, list[float]] = {policy: [] for policy in (*POLICIES, "optimum")}
    for scenario in traces:
        best = optimum(scenario)
        seed_cost = simulate(scenario, "largest_first")
        versus_seed["optimum"].append(best / seed_cost)
        for policy in POLICIES:
            cost = simulate(scenario, policy)
            ratios[policy].append(cost / best)
            versus_seed[policy].append(cost / seed_cost)
    return ratios, versus_seed


def run(quick: bool) -> Report:
    """Every policy on every trace, against the optimum and largest_first; then the
    default policy on the issue's calibration set."""
    report = Report("scheduling")
    ratios, versus_seed = _compare(scenarios(quick))
    # No online policy can beat the clairvoyant optimum: its own ratio to largest_first
    # bounds what "x largest_first" any policy can reach on these traces.
    bound = statistics.mean(versus_seed["optimum"])
    for policy in POLICIES:
        mean, worst = statistics.mean(ratios[policy]), max(ratios[policy])
        versus = statistics.mean(versus_seed[policy])
        result = figure(
            f"{policy}: load seconds / optimum",
            "x",
            ratios[policy],
            notes=f"mean {mean:.3f}x optimum, worst trace {worst:.3f}x, "
            f"{versus:.3f}x largest_first (the offline optimum: {bound:.3f}x), "
            f"over {len(ratios[policy])} traces",
        )
        if policy == DEFAULT:
            result.target = "mean <= 1.15x optimum, worst <= 1.35x, <= 0.8x largest_first"
            result.met = mean <= 1.15 and worst <= 1.35 and versus <= 0.8
        report.add(result)
    ratios, versus_seed = _compare(calibration(quick))
    mean, worst = statistics.mean(ratios[DEFAULT]), max(ratios[DEFAULT])
    report.add(
        figure(
            f"{DEFAULT} on the calibration set: load seconds / optimum",
            "x",
            ratios[DEFAULT],
            notes=f"mean {mean:.3f}x optimum, worst {worst:.3f}x; "
            f"{statistics.mean(versus_seed[DEFAULT]):.3f}x largest_first, which is "
            f"{statistics.mean(ratios['largest_first']):.3f}x optimum (the issue's: 1.47x); "
            f"lru {statistics.mean(ratios['lru']):.3f}x; the offline optimum is "
            f"{statistics.mean(versus_seed['optimum']):.3f}x largest_first",
        )
    )
    traces = fresh(quick)
    ratios, _ = _compare(traces)
    mean, worst = statistics.mean(ratios[DEFAULT]), max(ratios[DEFAULT])
    report.add(
        figure(
            f"{DEFAULT} on fresh seeds of the calibration kind (planner): load s / optimum",
            "x",
            ratios[DEFAULT],
            notes=f"mean {mean:.3f}x, worst {worst:.3f}x over {len(ratios[DEFAULT])} traces "
            f"(seeds {EVALUATION_SEEDS.start}+, never used while tuning); largest_first "
            f"{statistics.mean(ratios['largest_first']):.3f}x",
        )
    )
    # What learning popularity costs: the same planner told the true odds, and fed by
    # the exact Bayes filter of how these traces are drawn (bench/bounds.py).
    best = [optimum(trace) for trace in traces]
    for label, demand_of, why in (
        (
            "told the odds",
            lambda trace: list(trace.odds),
            "the odds each request was drawn with, which no daemon knows",
        ),
        (
            "with the exact filter",
            filtered_odds,
            "popularity learned from the same requests by the Bayes filter of how the "
            "traces are drawn: no learner predicts them better",
        ),
    ):
        bounded = [
            simulate(trace, DEFAULT, demand_of(trace)) / cost
            for trace, cost in zip(traces, best, strict=True)
        ]
        report.add(
            figure(
                f"{DEFAULT} {label}, fresh seeds (a bound): load s / optimum",
                "x",
                bounded,
                notes=f"mean {statistics.mean(bounded):.3f}x, worst {max(bounded):.3f}x, "
                f"{sum(r > 1.35 for r in bounded)} traces above 1.35x: the same planner "
                f"given {why}",
            )
        )
    # The same traces through the real daemon: a switch per request.
    configure_logging("warning")
    scale = QUICK_REPLAY_SCALE if quick else REPLAY_SCALE
    replayed = asyncio.run(replay_all(traces, DEFAULT, scale))
    through = [cost / least for least, cost in zip(best, replayed, strict=True)]
    mean, worst = statistics.mean(through), max(through)
    differ = sum(abs(a - b) > 1e-9 for a, b in zip(through, ratios[DEFAULT], strict=True))
    report.add(
        figure(
            f"{DEFAULT} on fresh seeds, replayed through the daemon: load s / optimum",
            "x",
            through,
            target="mean <= 1.15x optimum, no trace above 1.35x",
            met=mean <= 1.15 and worst <= 1.35,
            notes=f"mean {mean:.3f}x, worst {worst:.3f}x over {len(through)} traces: a real "
            f"Engine (fake runtime, simulated GPU, loads at {scale:g}x their "
            f"seconds) switching per request; {differ} traces differ from the planner-only "
            "replay (learned load times are measured, so near-ties can fall the other way)",
        )
    )
    return report


def main() -> None:
    """Run alone: `python -m bench.traces [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
