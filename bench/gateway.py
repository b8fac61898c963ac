"""modeld-gateway against the same fake vLLM backend reached directly (model loaded).

- Non-streamed completion: latency through the gateway and direct, request by request
  in turn on one keep-alive session each. Target (issue 35): added p50 <= 0.5 ms.
- Streamed chat completion: time to the first data chunk, the same way. Target: added
  p50 <= 0.5 ms.
- 64 concurrent streams from a backend that paces its tokens as an LLM does (10 ms
  apart): chunks per second through the gateway against direct. Target: >= 90 %.
  Unpaced (as fast as the fake can send) is reported too: there the gateway's own CPU
  cost per chunk shows.

- A streamed request for a model that is not loaded: the largest gap between bytes
  reaching the client before the answer's first event (the gateway's loading comments).
  Target: <= 5 s, while the model takes longer than that to load.

Every request through the gateway holds a lease on the daemon: the model's standing
lease, which the gateway's requests share (docs/gateway.md, lease batching).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.bareproxy import bare_proxy
from bench.common import Report, cli, figure, modeld_and_gateway, write_config
from bench.footprint import cpu_seconds
from modeld.client import call
from modeld.testing.ports import wait_until

COMPLETION = {"model": "m0", "prompt": "hi", "max_tokens": 4}
STREAM = {"model": "m0", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@dataclass
class Stack:
    """A daemon and a gateway in front: the first model's backend URL, the gateway's
    URL, and the gateway's process."""

    direct: str
    url: str
    gateway: subprocess.Popen[bytes]
    socket: Path
    daemon: subprocess.Popen[bytes]


@contextmanager
def stack(
    token_seconds: float,
    models: int = 1,
    devices_gb: float = 640.0,
    gateway: str = "",
    admin_key: str | None = None,
    load_seconds: float = 0.0,
) -> Iterator[Stack]:
    """modeld with `models` fake models (m0 loaded) and modeld-gateway in front, its
    `[gateway]` table's lines in `gateway` (with `admin_key` among its keys, if any)."""
    with tempfile.TemporaryDirectory(prefix="modeld-bench-") as tmp:
        socket, config = Path(tmp) / "modeld.sock", Path(tmp) / "modeld.toml"
        args = ("--token-seconds", str(token_seconds), "--request-seconds", "0")
        ports = write_config(
            config,
            models,
            socket,
            devices_gb=devices_gb,
            backend_args=args,
            load_seconds=load_seconds,
        )
        if gateway:
            config.write_text(config.read_text() + "[gateway]\n" + gateway + "\n")
        with modeld_and_gateway(config, socket) as (modeld, front, listen):
            asyncio.run(call("switch", socket, model="m0"))
            wait_until(lambda: _answers(f"http://{listen}/health", admin_key), "the gateway")
            direct = f"http://127.0.0.1:{ports[0]}"
            yield Stack(direct, f"http://{listen}", front, socket, modeld)


def _answers(url: str, key: str | None) -> bool:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def probe() -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as answer:
                return answer.status == 200
        except aiohttp.ClientError:
            return False

    return asyncio.run(probe())


async def latencies(urls: list[str], count: int, streamed: bool) -> list[list[float]]:
    """Per URL, `count` request times in ms (to the whole answer, or to the first
    streamed chunk), taking turns so both see the same machine."""
    samples: list[list[float]] = [[] for _ in urls]
    sessions = [aiohttp.ClientSession() for _ in urls]
    path = "/v1/chat/completions" if streamed else "/v1/completions"
    body = {**STREAM, "max_tokens": 4} if streamed else COMPLETION
    try:
        for round_ in range(count + 20):
            for index, (url, http) in enumerate(zip(urls, sessions, strict=True)):
                started = time.perf_counter()
                async with http.post(url + path, json=body) as answer:
                    if streamed:
                        await answer.content.readline()
                        elapsed = time.perf_counter() - started
                        await answer.read()
                    else:
                        await answer.read()
                        elapsed = time.perf_counter() - started
                    assert answer.status == 200
                if round_ >= 20:  # warm-up rounds are not counted
                    samples[index].append(elapsed * 1000)
    finally:
        for http in sessions:
            await http.close()
    return samples


async def stream_throughput(url: str, streams: int, tokens: int) -> float:
    """Chunks per second received over `streams` concurrent streamed answers."""
    body = {**STREAM, "max_tokens": tokens}
    connector = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> int:
            chunks = 0
            async with http.post(url + "/v1/chat/completions", json=body) as answer:
                async for line in answer.content:
                    if line.startswith(b"data: {"):
                        json.loads(line[6:])
                        chunks += 1
            return chunks

        started = time.perf_counter()
        received = sum(await asyncio.gather(*(one() for _ in range(streams))))
        return received / (time.perf_counter() - started)


async def cpu_per_request(url: str, pids: list[int], count: int) -> list[float]:
    """CPU microseconds each of `pids` spends per completion, over `count` sent to `url`
    one after another (after a warm-up)."""
    async with aiohttp.ClientSession() as http:

        async def send(requests: int) -> None:
            for _ in range(requests):
                async with http.post(url + "/v1/completions", json=COMPLETION) as answer:
                    await answer.read()
                    assert answer.status == 200

        await send(20)
        before = [cpu_seconds(pid) for pid in pids]
        await send(count)
        used = [cpu_seconds(pid) - was for pid, was in zip(pids, before, strict=True)]
        return [seconds / count * 1e6 for seconds in used]


def _added(
    report: Report, name: str, direct: list[float], gated: list[float], bare: list[float]
) -> None:
    """The baseline, the floor (a bare aiohttp proxy: bareproxy.py) and the gateway's
    figure, with the added p50 against its target."""
    base = report.add(figure(f"{name}, direct (baseline)", "ms", direct))
    floor = statistics.median(bare) - base.median
    report.add(
        figure(
            f"{name} through a bare aiohttp proxy (the floor)",
            "ms",
            bare,
            baseline=base.median,
            notes=f"added p50 {floor:.3f} ms: any aiohttp proxy on this machine",
        )
    )
    added = statistics.median(gated) - base.median
    result = figure(
        f"{name} through the gateway",
        "ms",
        gated,
        baseline=base.median,
        target="added p50 <= 0.5 ms",
        notes=f"added p50 {added:.3f} ms, {added - floor:.3f} ms over the bare proxy's",
    )
    result.met = added <= 0.5
    report.add(result)


def _cpu(report: Report, samples: list[list[float]]) -> None:
    """CPU per completion: the bare proxy's (the floor), the gateway's, the daemon's."""
    bare, gateway, daemon = (list(column) for column in zip(*samples, strict=True))
    floor = report.add(figure("CPU per completion: bare aiohttp proxy (floor)", "us", bare))
    report.add(figure("CPU per completion: gateway", "us", gateway, baseline=floor.median))
    report.add(
        figure(
            "CPU per completion: modeld (daemon)",
            "us",
            daemon,
            notes="mostly reading the backend's log line per request (the fake prints one, "
            "as vLLM's server does); lease counts batched (docs/gateway.md)",
        )
    )


def _throughput(report: Report, name: str, rates: list[float], target: bool) -> None:
    """Rates taken in turns, direct then through: the baseline and the gateway's."""
    base = report.add(figure(f"{name}, direct (baseline)", "chunks/s", rates[0::2]))
    result = figure(
        f"{name}, through the gateway",
        "chunks/s",
        rates[1::2],
        baseline=base.median,
        target=">= 0.9x direct" if target else "",
        notes=""
        if target
        else "the fake sends as fast as it can: the gateway's CPU per chunk shows",
    )
    result.met = result.median >= 0.9 * base.median if target else None
    report.add(result)


async def loading_gaps(url: str, socket: Path, samples: int) -> list[float]:
    """Per cold start of m1, the largest gap (s) between bytes the client receives before
    the answer's first data event; m1 is stopped again after each."""
    gaps: list[float] = []
    body = {**STREAM, "model": "m1", "max_tokens": 2}
    async with aiohttp.ClientSession() as http:
        for _ in range(samples):
            last = started = time.perf_counter()
            largest = 0.0
            async with http.post(url + "/v1/chat/completions", json=body) as answer:
                async for line in answer.content:
                    now = time.perf_counter()
                    largest, last = max(largest, now - last), now
                    if line.startswith(b"data: "):
                        break
                await answer.read()
            assert now - started > 5.0, "m1 loaded too fast to show a gap"
            gaps.append(largest)
            await call("stop", socket, model="m1")
    return gaps


def run(quick: bool) -> Report:
    """Measure the gateway's added latency and its streaming throughput."""
    report = Report("gateway")
    count = 100 if quick else 2000
    rounds = 1 if quick else 3
    with stack(token_seconds=0.0) as running, bare_proxy(running.direct) as (bare, bare_pid):
        direct, through = running.direct, running.url
        urls = [direct, through, bare]
        _added(report, "completion", *asyncio.run(latencies(urls, count, streamed=False)))
        _added(report, "first streamed chunk", *asyncio.run(latencies(urls, count, True)))
        pids = [running.gateway.pid, running.daemon.pid]
        cpu = []
        for _ in range(rounds):  # in turns: both see the same machine
            floor = asyncio.run(cpu_per_request(bare, [bare_pid], count))
            cpu.append(floor + asyncio.run(cpu_per_request(through, pids, count)))
        _cpu(report, cpu)
        urls = [direct, through]
        rates = [asyncio.run(stream_throughput(u, 64, 100)) for _ in range(rounds) for u in urls]
        _throughput(report, "64 streams unpaced", rates, target=False)
    with stack(token_seconds=0.01) as running:
        direct, through = running.direct, running.url
        tokens = 50 if quick else 200
        rates = [
            asyncio.run(stream_throughput(u, 64, tokens))
            for _ in range(rounds)
            for u in (direct, through)
        ]
        _throughput(report, "64 streams, 10 ms/token", rates, target=True)
    # Two models, each loading for 6 s: the request for m1 waits through its whole load.
    with stack(token_seconds=0.0, models=2, load_seconds=6.0) as running:
        socket = running.socket
        gaps = asyncio.run(loading_gaps(running.url, socket, 1 if quick else 5))
        report.add(
            figure(
                "largest gap between bytes while a cold model loads (6 s)",
                "s",
                gaps,
                target="<= 5 s",
                met=max(gaps) <= 5.0,
            )
        )
    return report


def main() -> None:
    """Run alone: `python -m bench.gateway [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
