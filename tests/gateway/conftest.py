"""A gateway in front of a served daemon on the fake host (in-process, real sockets)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright, expect

from modeld.core.backend_keys import backend_keys
from modeld.core.config import Config, DaemonConfig
from modeld.core.gateway_config import GatewayConfig
from modeld.core.gateway_keys import read_keys
from modeld.daemon.server import RpcServer, limits_for
from modeld.engine.engine import Engine
from modeld.gateway.app import Gateway, GatewayServer
from modeld.gateway.auth import BackendKeys, Keys
from modeld.gateway.link import DaemonLink
from modeld.testing.fakes import FakeRuntime
from modeld.testing.ports import free_port
from tests.support import EngineFactory, ServeFactory

KEY = "sk-test-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Fronted:
    """A daemon and the gateway in front of it."""

    url: str
    socket: Path
    engine: Engine
    runtime: FakeRuntime
    server: GatewayServer

    def leases(self, model: str) -> int:
        """Leases held on `model` now."""
        return int(self.engine.view.status().models[model].leases)


GatewayFactory = Callable[..., Awaitable[Fronted]]


@pytest.fixture
async def fronted(serve: ServeFactory) -> AsyncIterator[GatewayFactory]:
    """Start daemons with a gateway each: `await fronted(config, **gateway_settings)`."""
    servers: list[GatewayServer] = []

    async def start(config: Config, **settings: Any) -> Fronted:
        socket, engine, runtime = await serve(config)
        gateway_config = GatewayConfig(**settings)
        keys = Keys(read_keys(gateway_config))
        upstream = BackendKeys(backend_keys(config))
        link = DaemonLink(socket, frozenset(config.models), config.aliases())
        server = GatewayServer(Gateway(gateway_config, link, keys, upstream), 5.0)
        port = free_port()
        await server.start("127.0.0.1", port)
        servers.append(server)
        return Fronted(f"http://127.0.0.1:{port}", socket, engine, runtime, server)

    yield start
    for server in servers:
        await server.close()


@dataclass
class Restartable:
    """A daemon whose socket server can be stopped and started again (as a restarted
    daemon would be, its models still running), and a gateway in front."""

    url: str
    socket: Path
    engine: Engine
    runtime: FakeRuntime
    link: DaemonLink
    daemon: RpcServer

    async def stop_daemon(self) -> None:
        """The daemon goes away: its clients' connections close."""
        await self.daemon.close()

    async def start_daemon(self) -> None:
        """The daemon is back on the same socket."""
        self.daemon = RpcServer(self.engine, self.socket, limits=limits_for(DaemonConfig()))
        await self.daemon.start()


RestartableFactory = Callable[[Config], Awaitable[Restartable]]


@pytest.fixture
async def restartable(engines: EngineFactory, tmp_path: Path) -> AsyncIterator[RestartableFactory]:
    """`await restartable(config)`: a Restartable daemon with a gateway in front."""
    made: list[tuple[GatewayServer, Restartable]] = []

    async def start(config: Config) -> Restartable:
        engine, runtime, _ = await engines(config)
        socket = tmp_path / f"modeld-{len(made)}.sock"
        daemon = RpcServer(engine, socket, limits=limits_for(config.daemon))
        await daemon.start()
        link = DaemonLink(socket, frozenset(config.models), config.aliases())
        server = GatewayServer(Gateway(GatewayConfig(), link, Keys([])), 5.0)
        port = free_port()
        await server.start("127.0.0.1", port)
        front = Restartable(f"http://127.0.0.1:{port}", socket, engine, runtime, link, daemon)
        made.append((server, front))
        return front

    yield start
    for server, front in made:
        await server.close()
        await front.daemon.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless."""
    if CHROMIUM is None:
        if os.environ.get("MODELD_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (apt-get install chromium)")
        pytest.skip("no chromium (apt-get install chromium)")
    # Generous on a loaded 2-core CI machine: a check passes as soon as it holds.
    expect.set_options(timeout=15_000)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()
