"""LoRA adapters as models, on real vLLM: an adapter switch on a running base against
the base's cold start, and what loaded adapters cost the requests of the others.

vLLM for CPU (`.ci/vllm-venv`) serves the tiny random Llama with `--enable-lora
--max-loras 2` as a process of modeld's Engine; three adapters are written on the spot
in PEFT's layout (tests/support/tiny_lora.py). In one run: the base's cold start
(`switch` until it answers; the baseline), then switches between the adapters (a, b,
then c past the base's two slots, so the least recently used is unloaded, and a again),
each timed to the adapter answering in vLLM. Then one-token completions at the base's
socket: the base alone (the baseline) against the base with two adapters loaded, and a
loaded adapter with nothing else changing (the baseline) against the same adapter while
the other slot's adapters are switched in and out. Without the virtualenv the bench
says so and measures nothing.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.cold_start import real_engine, real_vllm, tiny_table
from bench.common import Report, cli, figure
from modeld.engine.engine import Engine
from tests.support.realvllm import (
    VLLM_CPU_VERSION,
    vllm_command,
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
    command = [
        *vllm_command(python, model_dir, "tiny", "--uds", "{socket}"),
        *("--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"),
    ]
    models: dict[str, dict[str, object]] = {"tiny": tiny_table(command)}
    for seed, name in enumerate(ADAPTERS, 1):
        path = write_tiny_lora(python, model_dir, work / "adapters" / name, seed)
        models[name] = {"base": "tiny", "adapter": str(path)}
    engine = await real_engine(work, models)
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
        found["adapter, quiet"] = await requests(engine, "b", samples)
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
    report = Report("adapters")
    python = real_vllm(report.bench)
    if python is None:
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
    pairs = (
        ("base alone", "base alone", "base beside two loaded adapters", "base beside adapters"),
        (
            "an adapter, nothing else changing",
            "adapter, quiet",
            "the same adapter while others are switched in and out",
            "adapter during switches",
        ),
    )
    for quiet, quiet_key, busy, busy_key in pairs:
        before = report.add(
            figure(f"one-token completion, {quiet} (baseline)", "ms", _ms(found[quiet_key]))
        )
        item = figure(
            f"one-token completion, {busy}",
            "ms",
            _ms(found[busy_key]),
            baseline=before.median,
            target="no added latency (within the baseline's spread)",
            notes=notes,
        )
        item.met = item.median <= before.median + max(before.spread, 0.1 * before.median)
        report.add(item)
    return report


def _ms(seconds: list[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def main() -> None:
    """Run alone: `python -m bench.adapters [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
