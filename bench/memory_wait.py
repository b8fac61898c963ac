"""P4: after a stop, the switch proceeds within 100 ms of the GPU releasing the memory.

A simulated GPU releases a stopped backend's memory a known delay after it dies; the
figure is how long after that release the target is started (the seed always slept
2 s; Ollama polls every 250 ms). The daemon's own default poll settings are used.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import Report, cli, figure
from bench.fakehost import two_models
from modeld.adapters.runtime.base import BackendStatus
from modeld.core.config import ModelConfig
from modeld.service.logs import configure_logging
from modeld.testing.fakes import Behaviour, FakeRuntime

# Not a multiple of the poll interval, so the figure shows the real polling lag.
RELEASE_DELAY_S = 0.43


class TimedRuntime(FakeRuntime):
    """The fake runtime, noting when each stop finished and each start began."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped_at: dict[str, float] = {}
        self.started_at: dict[str, float] = {}

    async def stop(self, model: ModelConfig) -> None:
        """Stop, and note when."""
        await super().stop(model)
        self.stopped_at[model.name] = time.monotonic()

    async def start(self, model: ModelConfig) -> BackendStatus:
        """Note when, and start."""
        self.started_at[model.name] = time.monotonic()
        return await super().start(model)


async def lags(rounds: int) -> list[float]:
    """Milliseconds between the memory's release and the next start, per switch."""
    runtime = TimedRuntime()
    samples = []
    async with two_models(
        runtime, Behaviour(load_seconds=0.0), release_delay_s=RELEASE_DELAY_S
    ) as engine:
        await engine.models.switch("a")
        for index in range(rounds):
            target, victim = ("b", "a") if index % 2 == 0 else ("a", "b")
            await engine.models.switch(target)
            released = runtime.stopped_at[victim] + RELEASE_DELAY_S
            samples.append((runtime.started_at[target] - released) * 1000)
    return samples


def run(quick: bool) -> Report:
    """Measure P4."""
    configure_logging("warning")
    report = Report("memory_wait")
    result = figure(
        "start after release",
        "ms",
        asyncio.run(lags(5 if quick else 40)),
        target="median <= 100 ms (seed: 2000 ms fixed sleep)",
        notes=f"release delay {RELEASE_DELAY_S}s",
    )
    result.met = 0 <= result.median <= 100
    report.add(result)
    return report


def main() -> None:
    """Run alone: `python -m bench.memory_wait [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
