"""A fake vLLM server for the demo and the tests: it speaks vLLM's HTTP protocol.

Like vLLM it keeps its port closed while it "loads", then answers `/health` with
200 and an empty body, `/v1/models` with the served model, and `/version`.
It can also fail the ways vLLM fails: exit during load, or die later (`/health`
503, then exit 0, as vLLM's API server does when its engine process dies).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from aiohttp import web


class FakeVllm:
    """One fake vLLM server; runs in-process (tests) or as a process (`modeld-fake-vllm`)."""

    def __init__(
        self,
        model: str,
        port: int,
        host: str = "127.0.0.1",
        load_seconds: float = 0.0,
    ) -> None:
        self.model = model
        self.port = port
        self.host = host
        self.load_seconds = load_seconds
        self.engine_dead = False
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.engine_dead else 200)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self._created,
                        "owned_by": "vllm",
                        "root": self.model,
                    }
                ],
            }
        )

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0+fake"})

    async def load(self) -> None:
        """Spend the "load" time with the port closed, then open it."""
        await asyncio.sleep(self.load_seconds)
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def close(self) -> None:
        """Close the port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = FakeVllm(args.model, args.port, args.host, args.load_seconds)
    print(f"fake-vllm: loading {args.model} ({args.load_seconds}s)", flush=True)
    loading = asyncio.create_task(
        asyncio.sleep(args.fail_after) if args.fail_after is not None else server.load()
    )
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        loading.cancel()
        await server.close()
        return 0
    if args.fail_after is not None:
        print(f"fake-vllm: CUDA out of memory while loading {args.model}", flush=True)
        return int(args.exit_code)
    print(f"fake-vllm: serving {args.model} on {args.host}:{args.port}", flush=True)
    if args.die_after is not None:
        try:
            await asyncio.wait_for(stop.wait(), args.die_after)
        except TimeoutError:
            print("fake-vllm: engine core died", flush=True)
            server.engine_dead = True
            await asyncio.sleep(1.0)
            await server.close()
            return 0
    await stop.wait()
    await server.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run a fake vLLM server until SIGTERM."""
    parser = argparse.ArgumentParser(prog="modeld-fake-vllm", description=__doc__)
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--fail-after", type=float, help="exit during load after this long")
    parser.add_argument("--exit-code", type=int, default=1, help="exit code for --fail-after")
    parser.add_argument("--die-after", type=float, help="engine dies this long after ready")
    sys.exit(asyncio.run(_serve(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
