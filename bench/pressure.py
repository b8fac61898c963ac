"""The gateway under pressure from one inference key, while a model loads (issue 31).

Three models of which two fit the GPU at once, each taking 12 s to load (6 s with
--quick); an admin key and two inference keys (`flood` and `calm`), `max_queue = 50`.

- Waiting bodies: the flood key sends 100 gzip bodies of 15 KB, each 15 MiB inflated,
  for the model that loads. The gateway's memory growth while they all wait (and its
  peak). Target: under 100 MB (1.5 GB before: each waited holding its inflated body).
- Meanwhile the page (`GET /`) and `/health`, each asked every 50 ms: their latency.
  Target: p99 under 100 ms (small bodies were inflated on the event loop: 2.73 s).
- A full share: the flood key sends 60 requests for a stopped model, which loads (25
  wait, its share of the queue); the calm key and an admin then ask for it too: both
  are taken into the queue and served (before, the flood took all 50 places and both
  were 503 queue_full for the whole load). Target: both 200, in about the load's time.
"""

from __future__ import annotations

import asyncio
import gzip
import time

import aiohttp

from bench.common import Report, cli, figure, rss_kb
from bench.gateway import stack

ADMIN = "sk-bench-admin-0123456789abc"
FLOOD = "sk-bench-flood-0123456789abc"
CALM = "sk-bench-calm-0123456789abcd"
GATEWAY = f"""api_keys = ["admin {ADMIN}"]
inference_keys = ["flood {FLOOD}", "calm {CALM}"]
max_queue = 50
"""
LOAD_S = 12.0
# How long anything waited for here may take.
DEADLINE_S = 60.0


async def _metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as got:
        for line in (await got.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


async def _until_waiting(http: aiohttp.ClientSession, url: str, count: int) -> None:
    for _ in range(int(DEADLINE_S / 0.05)):
        if await _metric(http, url, "modeld_gateway_requests_waiting") >= count:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{count} requests were not waiting within {DEADLINE_S:g} s")


def _post(
    http: aiohttp.ClientSession, url: str, key: str, model: str, data: bytes, gzipped: bool
) -> asyncio.Task[int]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"

    async def one() -> int:
        async with http.post(f"{url}/v1/completions", data=data, headers=headers) as answer:
            await answer.read()
            return answer.status

    return asyncio.create_task(one())


async def _flood(
    http: aiohttp.ClientSession, url: str, model: str, data: bytes, count: int
) -> list[asyncio.Task[int]]:
    """The flood key's `count` requests for `model`: the first starts its load (each
    request that would start one counts against the key's load budget), the rest join
    it; returned once the key's share of the queue (25) is waiting."""
    gzipped = data[:2] == b"\x1f\x8b"
    flood = [_post(http, url, FLOOD, model, data, gzipped)]
    await _until_waiting(http, url, 1)
    flood += [_post(http, url, FLOOD, model, data, gzipped) for _ in range(count - 1)]
    await _until_waiting(http, url, 25)
    return flood


async def _probe(url: str, stop: asyncio.Event) -> list[float]:
    """The page and /health, one after the other every 50 ms until `stop`: ms each (on
    a client of their own: the flood's fills its pool of connections)."""
    samples = []
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        while not stop.is_set():
            for path in ("/", "/health"):
                started = time.perf_counter()
                async with http.get(url + path) as answer:
                    await answer.read()
                samples.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)
    return samples


async def waiting_bodies(
    url: str, pid: int
) -> tuple[float, float, list[float], list[float], list[int]]:
    """The flood of gzip bodies for m1 while it loads: RSS growth now and at the peak
    (MB), the probes' latencies before the flood and during it, and what the flood was
    answered at the end."""
    bomb = gzip.compress(b'{"model": "m1", "prompt": "' + b"0" * 15 * 2**20 + b'"}')
    async with aiohttp.ClientSession() as http:
        before, peak_before = rss_kb(pid), rss_kb(pid, "VmHWM")
        stop = asyncio.Event()
        quiet = asyncio.create_task(_probe(url, stop))
        await asyncio.sleep(1.0)
        stop.set()
        baseline = await quiet
        stop = asyncio.Event()
        probes = asyncio.create_task(_probe(url, stop))
        flood = await _flood(http, url, "m1", bomb, 100)  # its share of the queue: the rest 429
        await asyncio.sleep(1.0)  # the probes go on while the flood waits
        grown = (rss_kb(pid) - before) / 1024
        peak = (rss_kb(pid, "VmHWM") - peak_before) / 1024
        stop.set()
        latencies = await probes
        statuses = await asyncio.gather(*flood)
    return grown, peak, latencies, baseline, sorted(set(statuses))


async def full_share(url: str) -> list[tuple[int, float]]:
    """The flood key fills its share while m2 loads; then the calm key and the admin ask
    for m2: their statuses and seconds."""
    async with aiohttp.ClientSession() as http:
        body = b'{"model": "m2", "prompt": "hi", "max_tokens": 2}'
        flood = await _flood(http, url, "m2", body, 60)
        started = time.monotonic()

        async def timed(key: str) -> tuple[int, float]:
            status = await _post(http, url, key, "m2", body, False)
            return status, round(time.monotonic() - started, 1)

        answered = await asyncio.gather(timed(CALM), timed(ADMIN))
        await asyncio.gather(*flood)
    return list(answered)


def run(quick: bool) -> Report:
    """Both scenarios on one gateway (m0 loaded first; two of the 8 GB models fit)."""
    report = Report("pressure")
    load_s = LOAD_S / 2 if quick else LOAD_S
    with stack(
        0.0, models=3, devices_gb=20.0, gateway=GATEWAY, admin_key=ADMIN, load_seconds=load_s
    ) as running:
        grown, peak, latencies, quiet, statuses = asyncio.run(
            waiting_bodies(running.url, running.gateway.pid)
        )
        report.add(
            figure(
                "gateway RSS growth, 100 gzip bodies (15 KB sent, 15 MiB inflated) waiting "
                "for a load",
                "MB",
                [grown],
                target="< 100 MB",
                met=grown < 100 and peak < 100,
                notes=f"peak RSS growth {peak:.1f} MB; the flood was answered {statuses}: "
                "25 waited (its share of max_queue 50) and reached the fake backend, which "
                "refuses bodies over 1 MiB (413); the rest 429 key_queue_full",
            )
        )
        probe = figure("probe", "ms", latencies)
        quiet_p50 = figure("quiet", "ms", quiet).median
        report.add(
            figure(
                "the page and /health, each every 50 ms during that flood",
                "ms",
                latencies,
                baseline=quiet_p50,
                target="p99 < 100 ms",
                met=probe.p99 < 100,
                notes=f"{len(latencies)} requests; before the flood p50 {quiet_p50:.1f} ms",
            )
        )
        answered = asyncio.run(full_share(running.url))
        report.add(
            figure(
                "another key and an admin, for a model that loads, while one key fills "
                "its share of the queue",
                "s",
                [seconds for _, seconds in answered],
                target="both served (200), none refused queue_full",
                met=all(status == 200 for status, _ in answered),
                notes=f"(status, seconds) for the calm key and the admin: {answered}; "
                f"the load takes {load_s:g} s",
            )
        )
    return report


if __name__ == "__main__":
    cli(run, __doc__)
