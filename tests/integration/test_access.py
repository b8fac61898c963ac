"""Access: who may change models, the connection cap, and what the socket allows."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from modeld.client import Client, DaemonUnreachable
from modeld.core.config import parse_config
from modeld.core.errors import ConfigError
from modeld.daemon.access import AccessPolicy, Caller, peer_credentials
from modeld.daemon.server import RpcServer
from tests.support import EngineFactory, eventually, make_config

NOBODY, NOGROUP = 65534, 65534
MODELS = {"alpha": {"gpu_memory_gb": 10}}


def test_policy_rules() -> None:
    """Unrestricted by default; restricted to listed uids and groups; root always allowed."""
    assert AccessPolicy().may_mutate(Caller(uid=1000))
    policy = AccessPolicy(allow_uids=[1000], allow_groups=["nogroup"])
    assert policy.may_mutate(Caller(uid=1000, gid=1000, groups=frozenset({1000})))
    assert policy.may_mutate(Caller(uid=2000, gid=2000, groups=frozenset({2000, NOGROUP})))
    assert not policy.may_mutate(Caller(uid=2000, gid=2000, groups=frozenset({2000})))
    assert policy.may_mutate(Caller(uid=0, gid=0))


def test_unknown_group_and_world_writable_socket_are_config_errors() -> None:
    """A group that does not exist, or a world-writable socket mode, is refused by name."""
    with pytest.raises(ConfigError, match=r"daemon\.allow_groups"):
        AccessPolicy(allow_groups=["no-such-group-here"])
    with pytest.raises(ConfigError, match=r"daemon\.socket_mode"):
        parse_config(
            {
                "daemon": {"socket_mode": 0o666},
                "models": {"a": {"runtime": "process", "command": ["x"], "endpoint": "http://x"}},
            }
        )


ServerFactory = Callable[..., Awaitable[Path]]


@pytest.fixture
async def serve(engines: EngineFactory, shared_dir: Path) -> AsyncIterator[ServerFactory]:
    """Start RpcServers on a socket the `nogroup` group may use."""
    servers: list[RpcServer] = []

    async def start(policy: AccessPolicy | None = None, max_connections: int = 256) -> Path:
        engine, _, _ = await engines(make_config(MODELS, [60]))
        path = shared_dir / f"modeld-{len(servers)}.sock"
        server = RpcServer(engine, path, 0o660, "nogroup", policy, max_connections)
        await server.start()
        servers.append(server)
        return path

    yield start
    for server in servers:
        await server.close()


def _call_as(uid: int, gid: int, path: Path, request: bytes) -> bytes:
    """In a forked child running as uid:gid, send one request line; return the answer."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the other user, connect, answer through the pipe
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(request)
                answer = sock.makefile("rb").readline()
            os.write(write_end, answer)
        finally:
            os._exit(0)
    os.close(write_end)
    return b"".join(iter(lambda: os.read(read_end, 65536), b""))


async def as_nobody(path: Path, method: str, **params: Any) -> dict[str, Any]:
    """Call the daemon from a process running as nobody:nogroup."""
    if os.geteuid() != 0:
        pytest.skip("needs root to call as another user")
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    # The answer comes from this process's own event loop: read it off the loop.
    answer = await asyncio.to_thread(_call_as, NOBODY, NOGROUP, path, request.encode() + b"\n")
    result: dict[str, Any] = json.loads(answer)
    return result


async def test_socket_mode_and_group(serve: ServerFactory) -> None:
    """The socket is 0660, owned by the configured group, never world-writable."""
    path = await serve()
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == NOGROUP


async def test_restricted_caller_may_read_but_not_change(serve: ServerFactory) -> None:
    """With allow_uids set, another uid reads status but its switch is refused."""
    path = await serve(AccessPolicy(allow_uids=[12345]))
    status = await as_nobody(path, "status")
    assert status["result"]["models"]["alpha"]["status"] == "stopped"
    refused = await as_nobody(path, "switch", model="alpha")
    assert refused["error"]["code"] == -32009
    assert refused["error"]["data"]["uid"] == NOBODY
    async with Client(path) as root:
        assert (await root.call("status"))["models"]["alpha"]["status"] == "stopped"
        await root.call("switch", model="alpha")
    # A lease on a running model is answered inline, and refused all the same.
    refused = await as_nobody(path, "acquire", model="alpha")
    assert refused["error"]["code"] == -32009
    async with Client(path) as root:
        assert (await root.call("status"))["models"]["alpha"]["leases"] == 0


async def test_allowed_group_may_change(serve: ServerFactory) -> None:
    """A caller in an allowed group may switch."""
    path = await serve(AccessPolicy(allow_groups=["nogroup"]))
    switched = await as_nobody(path, "switch", model="alpha")
    assert switched["result"]["state"] == "running"


def test_a_callers_groups_are_those_it_connected_with() -> None:
    """The groups that count are the kernel's record of the peer at connect time
    (SO_PEERGROUPS), not what /proc says of its PID later (a PID can be reused, and a
    process can change its groups): a peer that connected in nogroup and then left it
    is still in nogroup for this connection; one that joined it after connecting is
    not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to change a process's groups")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([NOGROUP])
            left, _ = socket.socketpair()
            os.setgroups([1234])
            joined, _ = socket.socketpair()
            os.setgroups([NOGROUP])
            seen = [sorted(peer_credentials(sock).groups) for sock in (left, joined)]
            os.write(write_end, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answer = b"".join(iter(lambda: os.read(read_end, 65536), b""))
    os.waitpid(pid, 0)
    assert json.loads(answer) == [[0, NOGROUP], [0, 1234]]


PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'


async def test_connection_cap_refuses_clearly_and_recovers(serve: ServerFactory) -> None:
    """Beyond max_connections a new connection gets a clear error; a freed slot is reused."""
    path = await serve(max_connections=3)
    held = [await asyncio.open_unix_connection(str(path)) for _ in range(3)]
    for reader, writer in held:
        writer.write(PING)
        assert "result" in json.loads(await reader.readline())
    reader, writer = await asyncio.open_unix_connection(str(path))
    refusal = json.loads(await reader.readline())
    assert refusal["error"]["code"] == -32010
    assert refusal["error"]["data"]["limit"] == 3
    assert await reader.read() == b""
    writer.close()
    held[0][1].close()

    async def served_again() -> bool:
        try:
            async with Client(path) as client:
                return bool((await client.call("ping"))["pong"])
        except DaemonUnreachable:
            return False

    await eventually(served_again, timeout=10)
    for _, other in held[1:]:
        other.close()


async def test_idle_connections_do_not_starve_others(serve: ServerFactory) -> None:
    """Hundreds of idle connections leave the daemon answering everyone else."""
    path = await serve(max_connections=1000)
    idle = [await asyncio.open_unix_connection(str(path)) for _ in range(300)]
    try:
        async with Client(path) as client:
            assert (await client.call("status"))["models"]["alpha"]["status"] == "stopped"
    finally:
        for _, writer in idle:
            writer.close()
