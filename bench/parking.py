"""Sleep-mode parking: switching back to a parked model against a cold start.

Two 50 GB models on one 80 GB GPU take turns. With `sleep_mode` and a host-RAM budget
the one making room is parked and later woken; without, it is stopped and later
loaded cold. Both runs use the same fake vLLM backends (cold load LOAD_S, wake WAKE_S,
sleep SLEEP_S: the scale of vLLM's published figures, shrunk), so the ratio is what
parking saves a user waiting for the switch, modeld's own overhead included.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import Report, cli, figure
from bench.fakehost import two_models
from modeld.service.logs import configure_logging
from modeld.testing.fakes import Behaviour, FakeRuntime

LOAD_S, WAKE_S, SLEEP_S = 1.5, 0.15, 0.1


async def switch_times(rounds: int, park: bool) -> list[float]:
    """Milliseconds each switch takes, models taking turns, parking or stopping."""
    behaviour = Behaviour(load_seconds=LOAD_S, wake_seconds=WAKE_S, sleep_seconds=SLEEP_S)
    samples = []
    async with two_models(
        FakeRuntime(),
        behaviour,
        daemon={"park_ram_gb": 100 if park else 0},
        size_gb=40,
        sleep_mode=park,
    ) as engine:
        await engine.models.switch("a")
        await engine.models.switch("b")  # both have loaded once: every later switch is a return
        for index in range(rounds):
            started = time.monotonic()
            await engine.models.switch("a" if index % 2 == 0 else "b")
            samples.append((time.monotonic() - started) * 1000)
    return samples


def run(quick: bool) -> Report:
    """Switch-back time with parking, against the same switches loading cold."""
    configure_logging("warning")
    report = Report("parking")
    rounds = 2 if quick else 10
    cold = report.add(
        figure("switch back, cold start", "ms", asyncio.run(switch_times(rounds, False)))
    )
    report.add(
        figure(
            "switch back, parked model woken",
            "ms",
            asyncio.run(switch_times(rounds, True)),
            baseline=cold.median,
            notes=f"fake vLLM: cold load {LOAD_S}s, wake {WAKE_S}s, sleep {SLEEP_S}s",
        )
    )
    return report


def main() -> None:
    """Run alone: `python -m bench.parking [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
