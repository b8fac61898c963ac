"""The one vLLM client reads every answer within a bound: a backend sending endless
bodies cannot make the daemon buffer them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from modeld.adapters.vllm import MAX_METRICS_BYTES, Health, VllmClient
from modeld.core.errors import SleepModeFailed
from modeld.testing.ports import free_port


@pytest.fixture
async def huge_backend() -> AsyncIterator[str]:
    """A backend whose /metrics and /is_sleeping answer far more than anyone should read."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"# " + b"x" * 65_536 + b"\n"
        for _ in range(MAX_METRICS_BYTES // len(chunk) + 16):
            await response.write(chunk)
        return response

    async def healthy(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/metrics", endless)
    app.router.add_get("/is_sleeping", endless)
    app.router.add_get("/health", healthy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_oversized_answers_are_refused_not_buffered(huge_backend: str) -> None:
    """/metrics past its bound reads as unknown activity; /is_sleeping past its bound is a
    sleep-mode failure; /health still answers."""
    client = VllmClient(timeout_s=10)
    try:
        assert await client.activity(huge_backend) is None
        with pytest.raises(SleepModeFailed, match="longer than"):
            await client.is_sleeping(huge_backend)
        assert await client.health(huge_backend) is Health.HEALTHY
    finally:
        await client.close()
