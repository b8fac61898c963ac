"""The switch planner: a pure function deciding which models to stop so a target fits.

No I/O and no logging here: the Supervisor gathers plain data, the planner decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from modeld.config import EvictionPolicy

# Float memory figures: treat differences below a kilobyte as equal.
EPSILON_GB = 1e-6
# Policies that choose the eviction set jointly search exactly up to this many
# candidates (2^n sets), greedily beyond.
EXACT_LIMIT = 12


@dataclass(frozen=True)
class Device:
    """One GPU as the planner sees it: total, and free net of reservations still loading."""

    index: int
    total_gb: float
    free_gb: float


@dataclass(frozen=True)
class Candidate:
    """A model that holds memory now (running or loading) and could be stopped."""

    name: str
    held_gb: Mapping[int, float]
    size_gb: float = 0.0
    last_used: float = 0.0
    pinned: bool = False
    # cost_aware: seconds to load it again, and how often it is asked for (decayed).
    reload_s: float = 0.0
    demand: float = 0.0


@dataclass(frozen=True)
class Target:
    """The model to make room for, with its need per device."""

    name: str
    need_gb: Mapping[int, float]


@dataclass(frozen=True)
class Plan:
    """Stop these models (in this order); then the target fits on every device it uses.

    The figures are those of the tightest device, in the seed's terms.
    """

    stop: tuple[str, ...]
    device: int
    required_gb: float
    available_before_gb: float
    freed_gb: float
    per_device: Mapping[int, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Infeasible:
    """Even stopping every stoppable model leaves the target without room on `device`."""

    device: int
    required_gb: float
    available_gb: float
    freed_gb: float
    total_available_gb: float
    blocked_by: tuple[str, ...] = ()


def _freed(stop: Sequence[Candidate], device: int) -> float:
    return sum(c.held_gb.get(device, 0.0) for c in stop)


def _fits(target: Target, free: Mapping[int, float], stop: Sequence[Candidate]) -> bool:
    return all(
        free.get(dev, 0.0) + _freed(stop, dev) + EPSILON_GB >= need
        for dev, need in target.need_gb.items()
    )


def _relief(candidate: Candidate, target: Target) -> float:
    """Memory a candidate frees on the devices the target needs."""
    return sum(candidate.held_gb.get(dev, 0.0) for dev in target.need_gb)


def _tightest(target: Target, free: Mapping[int, float], stop: Sequence[Candidate]) -> int:
    """The target device with the least headroom once `stop` is stopped."""
    return min(
        sorted(target.need_gb),
        key=lambda dev: free.get(dev, 0.0) + _freed(stop, dev) - target.need_gb[dev],
    )


def _prune(target: Target, free: Mapping[int, float], chosen: list[Candidate]) -> list[Candidate]:
    """Drop every chosen model the plan can do without, least eligible for eviction first."""
    kept = list(chosen)
    for candidate in reversed(chosen):
        without = [c for c in kept if c is not candidate]
        if _fits(target, free, without):
            kept = without
    return kept


def _greedy(
    target: Target,
    free: Mapping[int, float],
    ordered: Sequence[Candidate],
) -> list[Candidate]:
    chosen: list[Candidate] = []
    for candidate in ordered:
        if _fits(target, free, chosen):
            break
        chosen.append(candidate)
    return _prune(target, free, chosen)


def _cheapest(
    target: Target,
    free: Mapping[int, float],
    ordered: Sequence[Candidate],
    cost: Callable[[Sequence[Candidate]], float],
) -> list[Candidate]:
    """The feasible eviction set of least cost, chosen jointly rather than one by one;
    ties go to the set freeing the least memory, then to the policy's order."""
    if len(ordered) > EXACT_LIMIT:
        return _greedy(target, free, ordered)
    rank = {c.name: i for i, c in enumerate(ordered)}
    feasible = [
        list(combo)
        for count in range(1, len(ordered) + 1)
        for combo in combinations(ordered, count)
        if _fits(target, free, combo)
    ]
    best = min(
        feasible,
        key=lambda combo: (
            cost(combo),
            sum(_relief(c, target) for c in combo),
            [rank[c.name] for c in combo],
        ),
    )
    return _prune(target, free, best)


def _expected_reload_s(combo: Sequence[Candidate]) -> float:
    """Cold-load seconds the eviction is expected to cause: reload time weighted by
    demand. The square root keeps one burst of requests from outweighing everything
    else; on the bench traces it beat linear demand (see bench/traces.py)."""
    return float(sum(c.demand**0.5 * c.reload_s for c in combo))


def _order(
    policy: EvictionPolicy, target: Target, candidates: Sequence[Candidate]
) -> list[Candidate]:
    keys: dict[EvictionPolicy, Callable[[Candidate], tuple[float, float, str]]] = {
        # The seed's policy: the model freeing the most memory goes first.
        "largest_first": lambda c: (-_relief(c, target), -c.size_gb, c.name),
        "lru": lambda c: (c.last_used, -_relief(c, target), c.name),
        "fewest": lambda c: (-_relief(c, target), c.last_used, c.name),
        # Greedy fallback order for many candidates: cheapest expected reload per GB.
        "cost_aware": lambda c: (
            c.demand**0.5 * c.reload_s / max(_relief(c, target), EPSILON_GB),
            c.last_used,
            c.name,
        ),
    }
    return sorted(candidates, key=keys[policy])


def plan_switch(
    target: Target,
    devices: Sequence[Device],
    running: Sequence[Candidate],
    policy: EvictionPolicy,
) -> Plan | Infeasible:
    """Decide which models to stop so `target` fits on every device it needs."""
    free = {d.index: d.free_gb for d in devices}
    stoppable = [
        c
        for c in running
        if c.name != target.name and not c.pinned and _relief(c, target) > EPSILON_GB
    ]
    if not _fits(target, free, stoppable):
        dev = _tightest(target, free, stoppable)
        freed = _freed(stoppable, dev)
        blocked = tuple(
            sorted(
                c.name
                for c in running
                if c.name != target.name and c.pinned and c.held_gb.get(dev, 0.0) > 0
            )
        )
        return Infeasible(
            device=dev,
            required_gb=target.need_gb[dev],
            available_gb=free.get(dev, 0.0),
            freed_gb=freed,
            total_available_gb=free.get(dev, 0.0) + freed,
            blocked_by=blocked,
        )
    ordered = _order(policy, target, stoppable)
    if _fits(target, free, []):
        chosen: list[Candidate] = []
    elif policy == "fewest":
        chosen = _cheapest(target, free, ordered, len)
    elif policy == "cost_aware":
        chosen = _cheapest(target, free, ordered, _expected_reload_s)
    else:
        chosen = _greedy(target, free, ordered)
    dev = _tightest(target, free, chosen)
    per_device = {
        d: {
            "required_gb": need,
            "available_before_gb": free.get(d, 0.0),
            "freed_gb": _freed(chosen, d),
        }
        for d, need in sorted(target.need_gb.items())
    }
    return Plan(
        stop=tuple(c.name for c in chosen),
        device=dev,
        required_gb=target.need_gb[dev],
        available_before_gb=free.get(dev, 0.0),
        freed_gb=_freed(chosen, dev),
        per_device=per_device,
    )
