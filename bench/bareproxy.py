"""The floor under the gateway's figures: a bare aiohttp reverse proxy, as a process.

The same libraries and the same shape as modeld-gateway's request path (an aiohttp
server, one aiohttp client session to the backend, the answer streamed back piece by
piece as it arrives) and nothing else: no lease, no key, no check, no log, no metric.
What it adds to a request, and the CPU it spends on one, is what any aiohttp proxy on
this machine pays; what the gateway adds beyond it is the gateway's own work.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from aiohttp import web

from bench.common import tcp_listening
from modeld.testing.ports import free_port, wait_until


async def serve(upstream: str, port: int) -> None:
    """Forward every request to `upstream`, streaming each answer back as it comes."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with session.post(upstream + request.path, data=body, headers=headers) as answer:
            response = web.StreamResponse(status=answer.status)
            response.content_type = answer.content_type
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("POST", "/{path:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


@contextmanager
def bare_proxy(upstream: str) -> Iterator[tuple[str, int]]:
    """A bare proxy process in front of `upstream`: its URL and PID, once it listens."""
    port = free_port()
    code = "import asyncio, sys; from bench.bareproxy import serve; "
    code += "asyncio.run(serve(sys.argv[1], int(sys.argv[2])))"
    process = subprocess.Popen([sys.executable, "-c", code, upstream, str(port)])
    try:
        listen = f"127.0.0.1:{port}"
        wait_until(lambda: process.poll() is None and tcp_listening(listen), "the bare proxy")
        yield f"http://{listen}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)
