"""The switch planner: a pure function deciding which models to stop so a target fits.

No I/O and no logging here: the Engine gathers plain data, the planner decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from math import inf, prod
from typing import Literal

from modeld.core.config import EvictionPolicy

# Float memory figures: treat differences below a kilobyte as equal.
EPSILON_GB = 1e-6
# Policies that choose the eviction set jointly search every assignment of moves
# (keep, stop, park per candidate) up to this many, greedily beyond: 2^12 sets of
# stops, or 3^9 with parking.
EXACT_LIMIT = 20_000


@dataclass(frozen=True)
class Device:
    """One GPU as the planner sees it: total, and free net of reservations still loading."""

    index: int
    total_gb: float
    free_gb: float


@dataclass(frozen=True)
class Candidate:
    """A model that holds memory now (running, loading or parked) and could be stopped,
    or, with vLLM's sleep mode, parked."""

    name: str
    held_gb: Mapping[int, float]
    size_gb: float = 0.0
    last_used: float = 0.0
    pinned: bool = False
    # cost_aware: seconds to load it again, and how often it is asked for (decayed).
    reload_s: float = 0.0
    demand: float = 0.0
    # Sleep mode: it may be parked now; it is parked already (held_gb is then its
    # residual); what it would still hold per device once parked; the host RAM its
    # parked weights take; seconds to wake it.
    can_park: bool = False
    parked: bool = False
    residual_gb: Mapping[int, float] = field(default_factory=dict)
    park_ram_gb: float = 0.0
    wake_s: float = 0.0


Action = Literal["stop", "park"]


@dataclass(frozen=True)
class Move:
    """One thing a plan does to one candidate: stop it, or park it."""

    candidate: Candidate
    action: Action

    def freed(self, device: int) -> float:
        """GPU memory this move gives back on `device`."""
        held = self.candidate.held_gb.get(device, 0.0)
        if self.action == "stop":
            return held
        return max(0.0, held - self.candidate.residual_gb.get(device, 0.0))

    @property
    def ram_gb(self) -> float:
        """Host RAM this move takes (parking) or gives back (stopping a parked model)."""
        if self.action == "park":
            return self.candidate.park_ram_gb
        return -self.candidate.park_ram_gb if self.candidate.parked else 0.0

    @property
    def seconds(self) -> float:
        """Seconds it would take to have this model answer again after this move."""
        c = self.candidate
        if self.action == "park":
            return c.wake_s
        # A parked model would have woken in wake_s; stopped, it costs a cold load.
        return max(0.0, c.reload_s - c.wake_s) if c.parked else c.reload_s


@dataclass(frozen=True)
class Target:
    """The model to make room for, with its need per device."""

    name: str
    need_gb: Mapping[int, float]


@dataclass(frozen=True)
class Plan:
    """Stop these models (in this order), then park those; then the target fits on every
    device it uses. The figures are those of the tightest device, in the seed's terms.
    """

    stop: tuple[str, ...]
    device: int
    required_gb: float
    available_before_gb: float
    freed_gb: float
    per_device: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    park: tuple[str, ...] = ()


@dataclass(frozen=True)
class Infeasible:
    """Even stopping every stoppable model leaves the target without room on `device`."""

    device: int
    required_gb: float
    available_gb: float
    freed_gb: float
    total_available_gb: float
    blocked_by: tuple[str, ...] = ()


def _freed(moves: Sequence[Move], device: int) -> float:
    return sum(m.freed(device) for m in moves)


def _fits(target: Target, free: Mapping[int, float], moves: Sequence[Move]) -> bool:
    return all(
        free.get(dev, 0.0) + _freed(moves, dev) + EPSILON_GB >= need
        for dev, need in target.need_gb.items()
    )


def _relief(candidate: Candidate, target: Target) -> float:
    """Memory a candidate frees on the devices the target needs, if stopped."""
    return sum(candidate.held_gb.get(dev, 0.0) for dev in target.need_gb)


def _moved(moves: Sequence[Move], target: Target) -> float:
    return sum(m.freed(dev) for m in moves for dev in target.need_gb)


def _tightest(target: Target, free: Mapping[int, float], moves: Sequence[Move]) -> int:
    """The target device with the least headroom once `moves` are made."""
    return min(
        sorted(target.need_gb),
        key=lambda dev: free.get(dev, 0.0) + _freed(moves, dev) - target.need_gb[dev],
    )


def _options(candidate: Candidate, target: Target) -> list[Move]:
    """What may be done to a candidate: park it where sleep mode allows, else stop it."""
    moves = [Move(candidate, "stop")]
    park = Move(candidate, "park")
    if (
        candidate.can_park
        and not candidate.parked
        and sum(park.freed(dev) for dev in target.need_gb) > EPSILON_GB
    ):
        moves.insert(0, park)
    return moves


def _prune(
    target: Target, free: Mapping[int, float], chosen: list[Move], ram_free: float
) -> list[Move]:
    """Drop every move the plan can do without, least eligible for eviction first (a stop
    that gives back host RAM a park needs is not one of them)."""
    kept = list(chosen)
    for move in reversed(chosen):
        without = [m for m in kept if m is not move]
        if _fits(target, free, without) and _ram(without) <= ram_free + EPSILON_GB:
            kept = without
    return kept


def _ram(moves: Sequence[Move]) -> float:
    return sum(m.ram_gb for m in moves)


def _greedy(
    target: Target, free: Mapping[int, float], ordered: Sequence[Candidate], ram_free: float
) -> list[Move]:
    """In the policy's order: park each while host RAM allows, else stop it, until the
    target fits; parks that leave too much behind become stops, latest first."""
    chosen: list[Move] = []
    ram = ram_free
    for candidate in ordered:
        if _fits(target, free, chosen):
            break
        move = next(m for m in _options(candidate, target) if m.ram_gb <= ram + EPSILON_GB)
        chosen.append(move)
        ram -= move.ram_gb
    for index in reversed(range(len(chosen))):
        if _fits(target, free, chosen):
            break
        if chosen[index].action == "park":
            chosen[index] = Move(chosen[index].candidate, "stop")
    return _prune(target, free, chosen, ram_free)


def _cheapest(
    target: Target,
    free: Mapping[int, float],
    ordered: Sequence[Candidate],
    ram_free: float,
    cost: Callable[[Sequence[Move]], float],
) -> list[Move]:
    """The feasible set of moves of least cost, chosen jointly rather than one by one,
    within the host-RAM budget; ties go to the moves freeing the least memory (parking
    over stopping), then to the policy's order."""
    choices = [[None, *_options(c, target)] for c in ordered]
    if prod(len(c) for c in choices) > EXACT_LIMIT:
        return _greedy(target, free, ordered, ram_free)
    rank = {c.name: i for i, c in enumerate(ordered)}
    best: tuple[tuple[float, float, list[int], list[Action]], list[Move]] | None = None
    for assignment in product(*choices):
        moves = [m for m in assignment if m is not None]
        if not moves or _ram(moves) > ram_free + EPSILON_GB:
            continue
        if not _fits(target, free, moves):
            continue
        key = (
            cost(moves),
            _moved(moves, target),
            sorted(rank[m.candidate.name] for m in moves),
            [m.action for m in moves],
        )
        if best is None or key < best[0]:
            best = (key, moves)
    if best is None:
        # Only the RAM budget stood in the way: stopping is always within it.
        return _greedy(target, free, ordered, 0.0)
    return _prune(target, free, best[1], ram_free)


def _expected_wait_s(moves: Sequence[Move]) -> float:
    """Load seconds the moves are expected to cause: the time to have each model answer
    again (a wake for a parked one, a cold load for a stopped one) weighted by demand.
    The square root keeps one burst of requests from outweighing everything else; on
    the bench traces it beat linear demand (see bench/traces.py)."""
    return float(sum(m.candidate.demand**0.5 * m.seconds for m in moves))


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
    ram_free_gb: float = inf,
) -> Plan | Infeasible:
    """Decide which models to stop, and which to park, so `target` fits on every device
    it needs; parked weights stay within `ram_free_gb` of host RAM."""
    free = {d.index: d.free_gb for d in devices}
    stoppable = [
        c
        for c in running
        if c.name != target.name and not c.pinned and _relief(c, target) > EPSILON_GB
    ]
    stop_all = [Move(c, "stop") for c in stoppable]
    if not _fits(target, free, stop_all):
        dev = _tightest(target, free, stop_all)
        freed = _freed(stop_all, dev)
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
        chosen: list[Move] = []
    elif policy == "fewest":
        chosen = _cheapest(target, free, ordered, ram_free_gb, len)
    elif policy == "cost_aware":
        chosen = _cheapest(target, free, ordered, ram_free_gb, _expected_wait_s)
    else:
        chosen = _greedy(target, free, ordered, ram_free_gb)
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
        stop=tuple(m.candidate.name for m in chosen if m.action == "stop"),
        device=dev,
        required_gb=target.need_gb[dev],
        available_before_gb=free.get(dev, 0.0),
        freed_gb=_freed(chosen, dev),
        per_device=per_device,
        park=tuple(m.candidate.name for m in chosen if m.action == "park"),
    )
