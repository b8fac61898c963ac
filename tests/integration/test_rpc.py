"""The socket API: real Unix socket, NDJSON JSON-RPC, errors that disturb nobody."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from modeld.client import Client, RpcError
from modeld.core.states import State
from modeld.daemon.rpc import MAX_MESSAGE_BYTES
from modeld.daemon.server import RpcServer
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.testing.host import build_fake_host
from tests.support import EngineFactory, Served, ServeFactory, make_config, wait_for_state

MODELS = {"alpha": {"gpu_memory_gb": 30}, "beta": {"gpu_memory_gb": 40}}


@pytest.fixture
async def served(serve: ServeFactory) -> Served:
    """A daemon over the fake host, on a socket: path, Engine, runtime."""
    return await serve(make_config(MODELS, [60]))


@pytest.fixture
def socket_path(served: tuple[Path, Engine, FakeRuntime]) -> Path:
    """The served socket's path."""
    return served[0]


async def exchange(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    """Send raw lines on one connection; read one response per line."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        answers = []
        for line in lines:
            writer.write(line)
            await writer.drain()
            answers.append(json.loads(await reader.readline()))
        return answers
    finally:
        writer.close()


def request(method: str, params: Any = None, id_: int = 1) -> bytes:
    """One JSON-RPC request line."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode() + b"\n"


async def test_garbage_gets_errors_and_connection_stays_usable(socket_path: Path) -> None:
    """Malformed JSON, unknown method, bad params, unknown model: each errs; then ping works."""
    answers = await exchange(
        socket_path,
        b"{not json\n",
        request("explode"),
        request("switch", {"model": 42}),
        request("switch", ["alpha"]),
        request("switch", {"model": "alpha", "wiat": False}),
        request("switch", {"model": "nope"}),
        request("ping"),
    )
    codes = [a.get("error", {}).get("code") for a in answers]
    assert codes == [-32700, -32601, -32602, -32602, -32602, -32001, None]
    assert answers[2]["error"]["data"]["problems"][0]["field"] == "model"
    assert answers[4]["error"]["data"]["problems"][0]["field"] == "wiat"
    assert answers[5]["error"]["data"] == {
        "error": "unknown_model",
        "model": "nope",
        "available": ["alpha", "beta"],
    }
    assert answers[6]["result"]["pong"] is True


async def test_non_finite_numbers_are_refused_not_echoed(socket_path: Path) -> None:
    """An id of 1e400 (or NaN, Infinity) is a parse error, never echoed back as
    `Infinity`: every answer line is strict JSON."""
    lines = (
        b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}\n',
        b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}\n',
        b'{"jsonrpc":"2.0","id":1,"method":"switch","params":{"model":"alpha","timeout":-Infinity}}\n',
    )
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            raw = await reader.readline()
            assert b"Infinity" not in raw and b"NaN" not in raw, raw
            answer = json.loads(raw)
            assert answer["error"]["code"] == -32700 and answer["id"] is None
    finally:
        writer.close()


async def test_oversized_message_is_refused_and_the_connection_goes_on(
    socket_path: Path,
) -> None:
    """A line over 1 MiB is refused and skipped to its newline, whether it came in one
    piece or trickled in: the same connection (and the leases it holds) is then served."""
    async with Client(socket_path) as bystander:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(b"x" * (MAX_MESSAGE_BYTES + 10) + b"\n")
        writer.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        for _ in range(4):  # a line that ends only after several MiB
            writer.write(b"y" * (MAX_MESSAGE_BYTES // 2))
            await writer.drain()
        writer.write(b'tail"}\n{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
        await writer.drain()
        answers = [json.loads(await reader.readline()) for _ in range(4)]
        assert answers[0]["error"]["data"]["error"] == "too_large"
        assert answers[1]["id"] == 1 and answers[1]["result"]["pong"] is True
        assert answers[2]["error"]["data"]["error"] == "too_large"
        assert answers[3]["id"] == 2 and answers[3]["result"]["pong"] is True
        writer.close()
        assert (await bystander.call("ping"))["pong"] is True


async def test_switch_and_status_over_socket(socket_path: Path) -> None:
    """switch answers in the seed's shape; status shows the model running."""
    async with Client(socket_path) as client:
        result = await client.call("switch", model="alpha")
        assert {
            "status",
            "model",
            "unloaded_models",
            "estimated_load_time_seconds",
            "memory_info",
        } <= result.keys()
        assert result["status"] == "success"
        status = await client.call("status")
        assert status["models"]["alpha"]["status"] == "running"
        gpu = await client.call("gpu")
        assert gpu["devices"][0]["total_gb"] == 60


async def test_insufficient_memory_is_an_error_not_a_success(socket_path: Path) -> None:
    """Unlike the seed's HTTP 200, refusing a switch is a JSON-RPC error with the numbers."""
    async with Client(socket_path) as client:
        await client.call("switch", model="alpha")
        await client.call("switch", model="beta")
        with pytest.raises(RpcError) as caught:
            await client.call("start", model="alpha")
        assert caught.value.code == -32002
        assert caught.value.data["would_stop"] == ["beta"]


async def test_batch_and_notification(socket_path: Path) -> None:
    """A batch gets one line holding every answer; a notification gets none."""
    batch = (
        json.dumps(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "ping"},
                {"jsonrpc": "2.0", "method": "ping"},
                {"jsonrpc": "2.0", "id": 2, "method": "models"},
            ]
        ).encode()
        + b"\n"
    )
    [answer] = await exchange(socket_path, batch)
    assert isinstance(answer, list)
    assert sorted(a["id"] for a in answer) == [1, 2]


async def test_caller_hanging_up_does_not_abort_switch(
    served: tuple[Path, Engine, FakeRuntime],
) -> None:
    """A client that disconnects mid-switch leaves the switch to finish."""
    path, engine, _ = served
    _, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request("switch", {"model": "alpha"}))
    await writer.drain()
    writer.close()
    await wait_for_state(engine, "alpha", {State.LOADING}, 10)
    assert await wait_for_state(engine, "alpha", {State.RUNNING}, 10) is State.RUNNING


async def test_second_daemon_refuses_live_socket(socket_path: Path, engines: EngineFactory) -> None:
    """Starting on a socket another server answers fails, and leaves that socket alone."""
    engine, _, _ = await engines(make_config(MODELS, [60]))
    from modeld.core.errors import SocketInUse

    with pytest.raises(SocketInUse):
        await RpcServer(engine, socket_path).start()
    async with Client(socket_path) as client:
        assert (await client.call("ping"))["pong"] is True


async def test_others_are_served_while_a_switch_loads(
    served: tuple[Path, Engine, FakeRuntime],
) -> None:
    """During a long switch, status answers from memory and shows the model loading."""
    path, engine, runtime = served
    runtime.behaviour["alpha"] = Behaviour(load_seconds=1.0)
    async with Client(path) as switcher, Client(path) as watcher:
        switch = asyncio.create_task(switcher.call("switch", model="alpha"))
        await wait_for_state(engine, "alpha", {State.LOADING}, 10)
        status = await watcher.call("status")
        assert status["models"]["alpha"]["status"] == "loading"
        assert status["busy"] is True
        assert (await watcher.call("ping"))["pong"] is True
        assert not switch.done()
        assert (await switch)["state"] == "running"


async def test_stopping_the_daemon_answers_a_caller_waiting_on_a_load_at_once(
    tmp_path: Path,
) -> None:
    """A switch waiting for a slow load does not hold the daemon's exit for its
    shutdown_timeout_s: the caller is told modeld is stopping, and the daemon is gone."""
    host = await build_fake_host(make_config(MODELS, [60]))
    host.runtime.behaviour["alpha"] = Behaviour(load_seconds=120)
    daemon = host.daemon(tmp_path / "modeld.sock")
    await daemon.startup()
    stopped = False
    try:
        async with Client(tmp_path / "modeld.sock") as client:
            waiting = asyncio.create_task(client.call("switch", model="alpha"))
            await wait_for_state(host.engine, "alpha", {State.LOADING}, timeout=10)
            # Far below the 30 s the socket would wait for calls in flight.
            async with asyncio.timeout(10):
                await daemon.shutdown()
            stopped = True
            with pytest.raises(RpcError) as caught:
                await waiting
        assert caught.value.data["reason"] == "shutting_down"
        assert "stopping" in caught.value.message
    finally:
        if not stopped:
            await daemon.shutdown()
