"""Real vLLM's cold start with an empty compile cache against one with the cache modeld
keeps (`cache_dir/vllm/NAME`, VLLM_CACHE_ROOT).

vLLM for CPU (the virtualenv `.ci/vllm-venv` makes) serves a tiny random Llama as a
process of modeld's Engine, as a host runs it. Each round empties the model's cache,
times `switch` until vLLM answers /health (torch.compile runs and fills the cache), stops
it, and times a second `switch` (the kept cache is found). Both starts are the same
command on the same machine in the same run; the ratio is what the kept cache saves.
Without the virtualenv the bench says so and measures nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import Report, cli, figure
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.process import ProcessRuntime
from modeld.adapters.vllm import VllmClient
from modeld.core.config import parse_config
from modeld.engine.build import build_engine
from modeld.engine.engine import Engine
from modeld.service.logs import configure_logging
from tests.support.realvllm import (
    CPU_ENV,
    VLLM_CPU_VERSION,
    venv_path,
    vllm_command,
    vllm_python,
    write_tiny_llama,
)


def real_vllm(bench: str) -> Path | None:
    """The real-vLLM virtualenv's Python (quiet logs for the run), or None, said."""
    configure_logging("warning")
    python = vllm_python()
    if python is None:
        print(f"{bench}: skipped: no real-vLLM virtualenv at {venv_path()} (.ci/vllm-venv)")
    return python


async def real_engine(work: Path, models: dict[str, dict[str, object]]) -> Engine:
    """A started Engine over real process backends (vLLM for CPU) on a simulated 10 GB
    GPU, its state and caches in `work`."""
    config = parse_config(
        {
            "daemon": {
                "socket": str(work / "modeld.sock"),
                "state_dir": str(work / "state"),
                "cache_dir": str(work / "cache"),
                "poll_interval_s": 3600,
            },
            "gpu": {"backend": "simulated", "devices_gb": [10], "release_delay_s": 0},
            "models": models,
        }
    )
    engine = await build_engine(
        config,
        gpu=SimulatedGpu(config.gpu),
        runtimes={"process": ProcessRuntime()},
        vllm=VllmClient(timeout_s=5),
    )
    await engine.startup()
    return engine


def tiny_table(command: list[str]) -> dict[str, object]:
    """The tiny Llama's model table, started with `command`."""
    return {
        "runtime": "process",
        "command": command,
        "env": CPU_ENV,
        "gpu_memory_gb": 6,
        "load_timeout_s": 900,
        "stop_timeout_s": 10,
        # A first token on a busy two-core machine may take more than 5 s.
        "probe_timeout_s": 60,
    }


async def cold_starts(python: Path, model_dir: Path, work: Path) -> tuple[float, float]:
    """Seconds to running: with an empty cache, then with what that start left in it."""
    command = vllm_command(python, model_dir, "tiny", "--uds", "{socket}")
    engine = await real_engine(work, {"tiny": tiny_table(command)})
    try:
        times = []
        for _ in range(2):
            started = time.monotonic()
            result = await engine.models.switch("tiny", timeout=900)
            assert result.state == "running", result
            times.append(time.monotonic() - started)
            await engine.models.stop("tiny")
        return times[0], times[1]
    finally:
        await engine.shutdown()


def run(quick: bool) -> Report:
    """First and second cold start of the same real vLLM model, over rounds."""
    report = Report("cold_start")
    python = real_vllm(report.bench)
    if python is None:
        return report
    rounds = 1 if quick else 3
    first: list[float] = []
    second: list[float] = []
    with tempfile.TemporaryDirectory(prefix="modeld-cold-start-") as tmp:
        model_dir = write_tiny_llama(python, Path(tmp) / "tiny-llama")
        for index in range(rounds):
            work = Path(tmp) / f"round-{index}"
            a, b = asyncio.run(cold_starts(python, model_dir, work))
            first.append(a)
            second.append(b)
            shutil.rmtree(work, ignore_errors=True)
    empty = report.add(figure("real vLLM cold start, empty cache (baseline)", "s", first))
    report.add(
        figure(
            "real vLLM cold start, kept cache",
            "s",
            second,
            baseline=empty.median,
            target="clearly below the empty cache's",
            met=max(second) < min(first),
            notes=f"vllm-cpu {VLLM_CPU_VERSION}, tiny random Llama (2 layers), {rounds} rounds",
        )
    )
    return report


def main() -> None:
    """Run alone: `python -m bench.cold_start [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
