"""Backends trusted by token (issue 34), against fake vLLM backends that hang as vLLM's
engine does (/health 200, no token), under a real daemon and gateway in one process.

- An engine hangs with requests in flight through the gateway: the time from the hang
  to the model `failed` (its stall probe: target at most stall_after_s + the probe's
  deadline + 1.5 polls, as a poll sees the stall) and to `running` again (restart =
  "on-failure": target at most that plus the backoff and one cold start, the cold start
  measured in the same run as the baseline); how long its requests waited, and how
  many were left waiting longer than max_request_s (target 0: they end with
  `model_failed` instead).
- A running model's one-token requests, one after another with short gaps: with token
  probes due at every poll in the gaps (`probe_interval_s` a few milliseconds) against
  the same model probed by /health alone (the baseline). Target: no cost measurable at
  p50 (within 10% of the baseline's, the fake backend's own noise).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Report, cli, figure
from modeld.core.backend_keys import backend_keys
from modeld.core.config import parse_config
from modeld.core.gateway_config import GatewayConfig
from modeld.engine.engine import Engine
from modeld.gateway.app import Gateway, GatewayServer
from modeld.gateway.auth import BackendKeys, Keys
from modeld.gateway.link import DaemonLink
from modeld.service.logs import configure_logging
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.testing.host import build_fake_host
from modeld.testing.ports import free_port
from modeld.wire.events import StateChanged

STALL_S = 0.5
PROBE_S = 0.3
POLL_S = 0.1
BACKOFF_S = 0.05
LOAD_S = 0.3
MAX_REQUEST_S = 10.0
IN_FLIGHT = 4


@dataclass
class Front:
    """A daemon and a gateway over fake backends."""

    engine: Engine
    runtime: FakeRuntime
    url: str


@asynccontextmanager
async def fronted(model: dict[str, Any]) -> AsyncIterator[Front]:
    """modeld (model "a", fake backends) and the gateway in front, in this process."""
    config = parse_config(
        {
            "daemon": {
                "state_dir": tempfile.mkdtemp(prefix="modeld-bench-"),
                "poll_interval_s": POLL_S,
                "health_poll_interval_s": 0.01,
            },
            "gpu": {"backend": "simulated", "devices_gb": [80], "release_delay_s": 0.0},
            "models": {
                "a": {
                    "runtime": "process",
                    "command": ["x"],
                    "gpu_memory_gb": 40,
                    "endpoint": f"http://127.0.0.1:{free_port()}",
                    **model,
                }
            },
        }
    )
    runtime = FakeRuntime()
    runtime.behaviour["a"] = Behaviour(load_seconds=LOAD_S)
    host = await build_fake_host(config, runtime=runtime)
    with tempfile.TemporaryDirectory(prefix="modeld-bench-") as tmp:
        socket = Path(tmp) / "modeld.sock"
        daemon = host.daemon(socket)
        await daemon.startup()
        settings = GatewayConfig(max_request_s=MAX_REQUEST_S)
        link = DaemonLink(socket, frozenset(config.models))
        gateway = Gateway(settings, link, Keys([]), BackendKeys(backend_keys(config)))
        server = GatewayServer(gateway, 5.0)
        port = free_port()
        await server.start("127.0.0.1", port)
        try:
            yield Front(host.engine, runtime, f"http://127.0.0.1:{port}")
        finally:
            await server.close()
            await daemon.shutdown()


async def hang_once() -> tuple[float, float, float, list[float]]:
    """One hang: the cold start, hang to failed, hang to running again, and how long each
    request in flight waited."""
    table = {
        "stall_after_s": STALL_S,
        "probe_timeout_s": PROBE_S,
        "probe_interval_s": None,
        "restart": "on-failure",
        "restart_backoff_s": BACKOFF_S,
    }
    async with fronted(table) as front, aiohttp.ClientSession() as http:
        started = time.monotonic()
        await front.engine.models.switch("a")
        cold = time.monotonic() - started
        events = front.engine.events.subscribe()
        body = {"model": "a", "prompt": "hi", "max_tokens": 4}

        async def request() -> float:
            sent = time.monotonic()
            async with http.post(front.url + "/v1/completions", json=body) as answer:
                await answer.read()
            return time.monotonic() - sent

        hung = time.monotonic()
        front.runtime.engine_hangs("a")
        waiting = [asyncio.create_task(request()) for _ in range(IN_FLIGHT)]
        failed = running = 0.0
        while not running:
            event = await events.next()
            if isinstance(event, StateChanged) and event.model == "a":
                if event.to_state == "failed" and not failed:
                    failed = time.monotonic() - hung
                elif event.to_state == "running" and failed:
                    running = time.monotonic() - hung
        waits = list(await asyncio.gather(*waiting))
    return cold, failed, running, waits


async def latencies(probe: str, count: int) -> list[float]:
    """Seconds per one-token request at the backend, a few milliseconds apart, with
    `probe` ("token": due at every poll in the gaps; "health": none)."""
    table = {"probe": probe, "probe_interval_s": 0.005, "stall_after_s": None}
    async with fronted(table) as front, aiohttp.ClientSession() as http:
        await front.engine.models.switch("a")
        endpoint = front.engine.view.status().models["a"].endpoint
        body = {"model": "a", "prompt": "hi", "max_tokens": 1, "temperature": 0}
        times = []
        for _ in range(count):
            sent = time.perf_counter()
            async with http.post(endpoint + "/v1/completions", json=body) as answer:
                await answer.read()
            times.append(time.perf_counter() - sent)
            await asyncio.sleep(0.01)
    return times


def run(quick: bool) -> Report:
    """The hang figures, then the probes' cost."""
    configure_logging("warning")
    report = Report("reliability")
    hangs = [asyncio.run(hang_once()) for _ in range(2 if quick else 5)]
    colds = [cold for cold, *_ in hangs]
    base = report.add(figure("cold start (the restart's baseline)", "s", colds))
    to_failed = [failed for _, failed, _, _ in hangs]
    # The stall is seen by a poll (up to one late), after that poll's own reads.
    bound = STALL_S + PROBE_S + 1.5 * POLL_S
    report.add(
        figure(
            "engine hang to failed",
            "s",
            to_failed,
            target=f"<= stall_after_s + probe deadline + 1.5 polls ({bound:g}s)",
            met=max(to_failed) <= bound,
            notes=f"stall_after_s {STALL_S}, probe_timeout_s {PROBE_S}, poll {POLL_S}s",
        )
    )
    to_running = [running for _, _, running, _ in hangs]
    restart_bound = bound + BACKOFF_S + 1.5 * base.median
    report.add(
        figure(
            "engine hang to running again",
            "s",
            to_running,
            baseline=base.median,
            target=f"<= that + backoff + the cold start, 1.5x ({restart_bound:.2f}s)",
            met=max(to_running) <= restart_bound,
        )
    )
    waits = [wait for *_, each in hangs for wait in each]
    report.add(
        figure(
            "requests in flight on the hung engine: wait",
            "s",
            waits,
            notes=f"{IN_FLIGHT} requests per hang, ended with model_failed",
        )
    )
    late = sum(wait >= MAX_REQUEST_S for wait in waits)
    report.add(
        figure(
            "requests left waiting past max_request_s",
            "requests",
            [late],
            target="0",
            met=late == 0,
            notes=f"max_request_s {MAX_REQUEST_S:g}s, {len(waits)} requests",
        )
    )
    count = 60 if quick else 400
    health = report.add(
        figure("request, probed by /health only", "s", asyncio.run(latencies("health", count)))
    )
    token = asyncio.run(latencies("token", count))
    report.add(
        figure(
            "request, token probes due at every poll",
            "s",
            token,
            baseline=health.median,
            target="p50 within 10% of the baseline's",
            met=figure("", "s", token).median <= 1.1 * health.median,
        )
    )
    return report


def main() -> None:
    """Run alone: `python -m bench.reliability [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
