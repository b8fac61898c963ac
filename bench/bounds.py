"""How close any daemon could come to the offline optimum on the scheduling traces.

bench/traces.py measures cost_aware, which learns popularity from the requests it sees
(decayed counts). Two reference runs of the same planner isolate what that learning
costs, on the same traces:

- told the odds: the planner is given the odds each request was drawn with. No online
  policy has them; this bounds what better estimates of popularity could buy.
- the exact filter: popularity is learned from the same requests, but by the Bayes filter
  of how make_scenario draws them (Zipf weights over ranks, a few ranks trading places
  every 30-50 requests). No estimator learning from those requests predicts them better,
  so where this misses a figure, learning from requests cannot reach it.
"""

from __future__ import annotations

import statistics
import sys
from functools import cache
from itertools import permutations

from bench.workload import SHIFT_EVERY, SWAPS_PER_SHIFT, Scenario, zipf_weights


@cache
def _rankings(count: int) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Every ranking of `count` models (model index at each rank), and for each ranking
    the rankings one swap of two ranks away (a swap is its own inverse, so these are
    also the rankings it is reached from)."""
    rankings = tuple(permutations(range(count)))
    index = {ranking: i for i, ranking in enumerate(rankings)}
    neighbours = []
    for ranking in rankings:
        near = []
        for a in range(count):
            for b in range(a + 1, count):
                swapped = list(ranking)
                swapped[a], swapped[b] = swapped[b], swapped[a]
                near.append(index[tuple(swapped)])
        neighbours.append(tuple(near))
    return rankings, tuple(neighbours)


def _shift_chance(position: int) -> float:
    """The chance that ranks trade places before the request at `position`: make_scenario
    draws a period at every request and shifts when the position is a multiple of it."""
    if not position:
        return 0.0
    low, high = SHIFT_EVERY
    return sum(position % period == 0 for period in range(low, high + 1)) / (high - low + 1)


def filtered_odds(scenario: Scenario) -> list[dict[str, float]]:
    """For each request, the filter's odds of every model being asked for next, having
    seen the trace up to and including that request."""
    names = sorted(scenario.models, key=lambda name: int(name.removeprefix("m")))
    count = len(names)
    rankings, neighbours = _rankings(count)
    weights = zipf_weights(count)
    total = sum(weights)
    share = [w / total for w in weights]
    # rank_of[r][m]: the rank of model m in ranking r.
    rank_of = [{model: rank for rank, model in enumerate(r)} for r in rankings]
    belief = [1.0 / len(rankings)] * len(rankings)

    def shift(belief: list[float], chance: float) -> list[float]:
        if not chance:
            return belief
        moved = belief
        for _ in range(SWAPS_PER_SHIFT):
            pairs = len(neighbours[0])
            moved = [sum(map(moved.__getitem__, near)) / pairs for near in neighbours]
        return [(1 - chance) * b + chance * m for b, m in zip(belief, moved, strict=True)]

    odds = []
    for position, name in enumerate(scenario.trace):
        belief = shift(belief, _shift_chance(position))
        model = names.index(name)
        belief = [b * share[ranks[model]] for b, ranks in zip(belief, rank_of, strict=True)]
        norm = sum(belief)
        belief = [b / norm for b in belief]
        ahead = shift(belief, _shift_chance(position + 1))
        predicted = [0.0] * count
        for b, ranking in zip(ahead, rankings, strict=True):
            for rank, m in enumerate(ranking):
                predicted[m] += b * share[rank]
        odds.append(dict(zip(names, predicted, strict=True)))
    return odds


def compare(seeds: range) -> dict[str, list[float]]:
    """On traces of the calibration kind drawn from `seeds`: each trace's load seconds
    over the optimum's for cost_aware as shipped, told the odds, and with the filter."""
    from bench.traces import optimum, simulate
    from bench.workload import make_scenario

    ratios: dict[str, list[float]] = {"shipped": [], "told the odds": [], "exact filter": []}
    for seed in seeds:
        trace = make_scenario(seed, 6, 1, 160)
        best = optimum(trace)
        ratios["shipped"].append(simulate(trace, "cost_aware") / best)
        ratios["told the odds"].append(simulate(trace, "cost_aware", list(trace.odds)) / best)
        ratios["exact filter"].append(simulate(trace, "cost_aware", filtered_odds(trace)) / best)
    return ratios


def main() -> None:
    """`python -m bench.bounds [FIRST [COUNT]]`: the three on seeds FIRST.. (default the
    80 tuning seeds 61000+ that docs/design.md quotes), mean and worst."""
    first = int(sys.argv[1]) if len(sys.argv) > 1 else 61_000
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 80
    for name, ratios in compare(range(first, first + count)).items():
        over = sum(r > 1.35 for r in ratios)
        print(
            f"{name}: mean {statistics.mean(ratios):.3f}x, worst {max(ratios):.3f}x, "
            f"{over} of {count} traces above 1.35x"
        )


if __name__ == "__main__":
    main()
