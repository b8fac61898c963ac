"""The scheduling traces: models of varied size and load time, and requests drawn with
Zipf popularity whose favourites shift over time (bench/traces.py replays them)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from modeld.core.planner import Device


@dataclass(frozen=True)
class Model:
    """A model in a trace: memory per device and cold-load seconds."""

    name: str
    need: dict[int, float]
    load_s: float


@dataclass(frozen=True)
class Scenario:
    """Models, devices and a request sequence; for generated traces, the odds each
    request was drawn with (what no online policy knows; bench/bounds.py uses them)."""

    label: str
    models: dict[str, Model]
    devices: tuple[Device, ...]
    trace: tuple[str, ...]
    odds: tuple[Mapping[str, float], ...] = ()


# How make_scenario draws requests: Zipf weights over popularity ranks; every 30-50
# requests (a fresh draw at each request) a few ranks trade places.
ZIPF_EXPONENT = 1.1
SHIFT_EVERY = (30, 50)
SWAPS_PER_SHIFT = 2


def zipf_weights(count: int) -> list[float]:
    """The unnormalised weight of each popularity rank."""
    return [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(count)]


def fits(models: Iterable[Model], devices: Sequence[Device]) -> bool:
    """Whether these models can all be loaded at once."""
    used: dict[int, float] = {}
    for model in models:
        for device, gb in model.need.items():
            used[device] = used.get(device, 0.0) + gb
    return all(used.get(d.index, 0.0) <= d.total_gb + 1e-9 for d in devices)


def make_scenario(seed: int, count: int, gpus: int, length: int) -> Scenario:
    """A seeded scenario: models, Zipf requests whose favourites shift every so often."""
    rng = random.Random(seed)
    models = {}
    for index in range(count):
        placement = [rng.randrange(gpus)] if gpus == 1 or rng.random() < 0.7 else [0, 1]
        models[f"m{index}"] = Model(
            f"m{index}",
            {d: float(rng.randint(10, 50)) for d in placement},
            float(rng.randint(5, 60)),
        )
    names = list(models)
    order = names[:]
    rng.shuffle(order)
    weights = zipf_weights(count)
    total = sum(weights)
    trace = []
    odds = []
    for position in range(length):
        if position and position % rng.randint(*SHIFT_EVERY) == 0:
            # Favourites shift: a few ranks trade places.
            for _ in range(SWAPS_PER_SHIFT):
                a, b = rng.sample(range(count), 2)
                order[a], order[b] = order[b], order[a]
        odds.append({name: weight / total for name, weight in zip(order, weights, strict=True)})
        trace.append(rng.choices(order, weights)[0])
    devices = tuple(Device(d, 80.0, 80.0) for d in range(gpus))
    label = f"{count} models, {gpus} GPU, seed {seed}"
    return Scenario(label, models, devices, tuple(trace), tuple(odds))
