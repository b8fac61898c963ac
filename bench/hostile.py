"""Hostile clients against a real modeld process: does everyone else stay served?

- 500 idle connections from one uid (nobody, when run as root): another client's
  `status`, on a fresh connection each time, against the same call on a quiet daemon.
  Target: within 2x.
- A client flooding 40,000 `status` calls without reading its answers: a bystander's
  `ping` against the quiet one (target within 2x), and how much the daemon grew
  (target under 150 MB).

And against modeld-gateway (two models that cannot share the GPU, an admin key and two
inference keys with the default budget of 10 loads a minute):

- Three 30 KB gzip bombs at once (30 MiB each inflated): the gateway's peak RSS growth.
  Target: under 50 MB.
- One key thrashing (8 workers alternating the two models as fast as they are
  answered): another key's request to the model that runs, against the same request
  on a quiet gateway. Target: p50 within 2x.
- The thrashing key's loads and wakes over the flood. Target: at most its budget (10 a
  minute; the flood lasts under a minute).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import multiprocessing
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Figure, Report, cli, daemon, figure, rss_kb
from bench.gateway import stack

STATUS = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'
NOBODY = 65534


async def fresh_calls(path: Path, request: bytes, count: int) -> list[float]:
    """Connect, call, hang up, `count` times: microseconds each."""
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
        writer.write(request)
        await reader.readline()
        samples.append((time.perf_counter_ns() - started) / 1000)
        writer.close()
    return samples


async def calls(path: Path, request: bytes, count: int) -> list[float]:
    """`count` calls on one connection: microseconds each."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        writer.write(request)
        await reader.readline()
        samples.append((time.perf_counter_ns() - started) / 1000)
    writer.close()
    return samples


def hoard(path: Path, count: int) -> tuple[int, list[socket.socket]]:
    """Open `count` connections (as nobody when root) and keep the admitted ones."""
    if os.geteuid() == 0:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)  # SO_PEERCRED records the credentials at connect()
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            sock.settimeout(0.05)
            try:
                sock.recv(4096)
                sock.close()  # refused: its share is full
            except TimeoutError:
                held.append(sock)
    finally:
        if os.geteuid() != os.getuid():
            os.seteuid(0)
            os.setegid(0)
    return len(held), held


def flood(path: Path, stop: threading.Event) -> None:
    """40,000 `status` calls, never reading an answer, until cut off or told to stop."""
    payload = STATUS * 40_000
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.settimeout(0.5)
        sent = 0
        while sent < len(payload) and not stop.is_set():
            try:
                sent += sock.send(payload[sent : sent + 65536])
            except TimeoutError:
                continue
            except OSError:
                return


ADMIN = "sk-bench-admin-0123456789"
THRASHER = "sk-bench-thrash-0123456789"
CALM = "sk-bench-calm-0123456789"
GATEWAY = f"""api_keys = ["admin {ADMIN}"]
inference_keys = ["thrash {THRASHER}", "calm {CALM}"]
key_loads_per_minute = 10
"""
COMPLETION = {"model": "m0", "prompt": "hi", "max_tokens": 2}


async def bombs(url: str, count: int) -> list[int]:
    """`count` gzip bombs at once: their statuses."""
    bomb = gzip.compress(b'{"model": "m0", "pad": "' + b"0" * 30 * 2**20 + b'"}')
    headers = {
        "Authorization": f"Bearer {ADMIN}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    async with aiohttp.ClientSession() as http:

        async def one() -> int:
            async with http.post(f"{url}/v1/completions", data=bomb, headers=headers) as answer:
                return answer.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def calm_requests(url: str, count: int) -> list[float]:
    """`count` completions of the running model with the calm key: ms each."""
    samples = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CALM}"}) as http:
        for _ in range(count):
            started = time.perf_counter()
            async with http.post(f"{url}/v1/completions", json=COMPLETION) as answer:
                await answer.read()
                assert answer.status == 200, answer.status
            samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _thrash(url: str, spent: Any, stop: Any, tally: Any) -> None:
    """Eight workers of the thrashing key alternating m0 and m1 until `stop`; `spent`
    is set once the key has been refused eight times (its budget is spent)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {THRASHER}"}) as http:

        async def worker(first: int) -> None:
            turn = first
            while not stop.is_set():
                body = {**COMPLETION, "model": f"m{turn % 2}"}
                async with http.post(f"{url}/v1/completions", json=body) as answer:
                    await answer.read()
                    with tally.get_lock():
                        tally[0 if answer.status == 200 else 1] += 1
                        if tally[1] >= 8:
                            spent.set()
                turn += 1

        await asyncio.gather(*(worker(n) for n in range(8)))


def thrasher(url: str, spent: Any, stop: Any, tally: Any) -> None:
    """The thrashing key's client, in a process of its own (as a hostile caller is)."""
    asyncio.run(_thrash(url, spent, stop, tally))


def thrash_while(url: str, count: int) -> tuple[list[float], dict[str, int]]:
    """The calm key's `count` requests while another process thrashes; the samples and
    what the thrasher got."""
    context = multiprocessing.get_context("spawn")
    spent, stop = context.Event(), context.Event()
    tally = context.Array("i", 2)
    flood = context.Process(target=thrasher, args=(url, spent, stop, tally))
    flood.start()
    try:
        # The budget is spent within the first seconds: measure the steady state after.
        assert spent.wait(120), "the thrashing key was never refused"

        async def measure() -> list[float]:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            switch = f"{url}/v1/models/switch?target_model=m0"
            async with (
                aiohttp.ClientSession(headers=headers) as admin,
                admin.post(switch) as answer,
            ):
                await answer.read()
            return await calm_requests(url, count)

        samples = asyncio.run(measure())
    finally:
        stop.set()
        flood.join(60)
    return samples, {"served": tally[0], "refused": tally[1]}


def key_loads(url: str) -> float:
    """modeld_gateway_key_loads_total for the thrashing key."""

    async def read() -> str:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/metrics", headers=headers) as answer,
        ):
            return await answer.text()

    for line in asyncio.run(read()).splitlines():
        if line.startswith('modeld_gateway_key_loads_total{key="thrash"}'):
            return float(line.split()[-1])
    return 0.0


def within_twice(
    name: str, unit: str, samples: list[float], quiet: float, notes: str = ""
) -> Figure:
    """A figure whose median must stay within twice the quiet one's."""
    return figure(
        name,
        unit,
        samples,
        baseline=quiet,
        target="<= 2x quiet",
        met=figure("x", unit, samples).median <= 2 * quiet,
        notes=notes,
    )


def gateway_figures(report: Report, quick: bool) -> None:
    """The gateway under a gzip bomb and a thrashing key."""
    count = 30 if quick else 300
    # 10 GB: m0 and m1 (8 GB each) cannot share it.
    with stack(0.0, models=2, devices_gb=10.0, gateway=GATEWAY, admin_key=ADMIN) as running:
        url = running.url
        quiet = asyncio.run(calm_requests(url, count))
        before = rss_kb(running.gateway.pid, "VmHWM")
        statuses = asyncio.run(bombs(url, 3))
        grown = (rss_kb(running.gateway.pid, "VmHWM") - before) / 1024
        report.add(
            figure(
                "gateway peak RSS growth, three 30 KB gzip bombs (30 MiB inflated) at once",
                "MB",
                [grown],
                target="< 50 MB",
                met=grown < 50 and statuses == [413] * 3,
                notes=f"answered {statuses}",
            )
        )
        started = time.monotonic()
        during, thrashed = thrash_while(url, count)
        lasted = time.monotonic() - started
        quiet_p50 = figure("quiet", "ms", quiet).median
        report.add(
            within_twice(
                "another key's request while one key thrashes two models",
                "ms",
                during,
                quiet_p50,
                f"the thrashing key got {thrashed}; quiet p50 {quiet_p50:.2f} ms",
            )
        )
        loads = key_loads(url)
        report.add(
            figure(
                "loads caused by the thrashing key",
                "loads",
                [loads],
                target="<= 10 a minute",
                met=loads <= 10 and lasted < 60,
                notes=f"over {lasted:.0f} s of thrashing; the rest refused 429",
            )
        )


def run(quick: bool) -> Report:
    """Measure the daemon's scenarios on one daemon, then the gateway's."""
    report = Report("hostile")
    count = 50 if quick else 400
    with daemon(4, socket_group="nogroup", socket_dir_mode=0o755) as (process, path):
        quiet = asyncio.run(fresh_calls(path, STATUS, count))
        held, sockets = hoard(path, 500)
        loaded = asyncio.run(fresh_calls(path, STATUS, count))
        for sock in sockets:
            sock.close()
        quiet_median = figure("quiet", "us", quiet).median
        report.add(
            within_twice(
                "status on a fresh connection, 500 idle connections from one uid",
                "us",
                loaded,
                quiet_median,
                f"{held} of the 500 admitted (the uid's share); quiet median {quiet_median:.0f} us",
            )
        )
        quiet_ping = figure("quiet", "us", asyncio.run(calls(path, PING, count))).median
        before = rss_kb(process.pid)
        stop = threading.Event()
        flooder = threading.Thread(target=flood, args=(path, stop))
        flooder.start()
        time.sleep(0.5)
        during = asyncio.run(calls(path, PING, count))
        peak = rss_kb(process.pid)
        stop.set()
        flooder.join()
        report.add(
            within_twice(
                "ping while another client floods 40,000 status calls unread",
                "us",
                during,
                quiet_ping,
            )
        )
        grown = (peak - before) / 1024
        report.add(
            figure(
                "daemon growth during the flood",
                "MB",
                [grown],
                target="< 150 MB",
                met=grown < 150,
                notes=json.dumps({"rss_before_mb": round(before / 1024, 1)}),
            )
        )
    gateway_figures(report, quick)
    return report


if __name__ == "__main__":
    cli(run, __doc__)
