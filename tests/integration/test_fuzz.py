"""Hostile input on the socket: whatever arrives, an answer or a closed connection, and
the daemon goes on answering everyone else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeld.client import Client
from modeld.daemon.rpc import MAX_MESSAGE_BYTES
from modeld.daemon.server import RpcServer
from tests.support import EngineFactory, make_config

METHODS = ["ping", "status", "gpu", "models", "switch", "start", "stop", "restart"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
async def socket_path(engines: EngineFactory, tmp_path: Path) -> AsyncIterator[Path]:
    """A daemon over a fake host whose models do not exist under random names."""
    engine, _, _ = await engines(make_config({"alpha": {"gpu_memory_gb": 10}}, [60]))
    path = tmp_path / "fuzz.sock"
    server = RpcServer(engine, path)
    await server.start()
    yield path
    await server.close()


async def send_and_check(path: Path, line: bytes) -> None:
    """Send one raw line; expect one JSON answer (or silence for a notification), then a
    working connection (or a closed one after an oversized frame)."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=64 * 1024 * 1024)
    try:
        writer.write(line)
        writer.write(b'{"jsonrpc":"2.0","id":"probe","method":"ping"}\n')
        await writer.drain()
        answers: list[Any] = []
        async with asyncio.timeout(10):
            while True:
                raw = await reader.readline()
                if not raw:
                    assert len(line) > MAX_MESSAGE_BYTES, f"closed after {line[:80]!r}"
                    return
                answer = json.loads(raw)
                answers.append(answer)
                if isinstance(answer, dict) and answer.get("id") == "probe":
                    break
        for answer in answers[:-1]:
            items = answer if isinstance(answer, list) else [answer]
            for item in items:
                assert item["jsonrpc"] == "2.0"
                assert ("error" in item) != ("result" in item)
                if "error" in item:
                    assert isinstance(item["error"]["code"], int)
    finally:
        writer.close()


fuzz_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@fuzz_settings
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ") + b"\n"))
async def test_random_bytes(socket_path: Path, line: bytes) -> None:
    """Random bytes, invalid UTF-8 included, get a JSON-RPC error."""
    await send_and_check(socket_path, line)


@fuzz_settings
@given(st.sampled_from(METHODS), json_values, st.one_of(st.integers(), st.text(), st.none()))
async def test_wrong_params_for_every_method(
    socket_path: Path, method: str, params: Any, request_id: Any
) -> None:
    """Any params of any type for any method: a well-formed answer, nothing started."""
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    await send_and_check(socket_path, json.dumps(body).encode() + b"\n")


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"]" * 100_000 + b"\n",
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":'
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}\n",
        json.dumps([{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(10_000)]).encode()
        + b"\n",
        b"[]\n",
        b'{"jsonrpc":"2.0","id":1,"method":"ping"\n',
        b"x" * (MAX_MESSAGE_BYTES + 1) + b"\n",
    ],
    ids=["deep-array", "deep-params", "huge-batch", "empty-batch", "truncated", "oversized"],
)
async def test_pathological_lines(socket_path: Path, line: bytes) -> None:
    """Deep nesting, huge batches, truncation, oversized frames: answered or closed."""
    await send_and_check(socket_path, line)
    async with Client(socket_path) as client:
        assert (await client.call("status"))["models"]["alpha"]["status"] == "stopped"


async def test_last_line_without_newline_is_answered(socket_path: Path) -> None:
    """A client that sends a final request without a newline and half-closes gets its answer."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(b'{"jsonrpc":"2.0","id":7,"method":"ping"}')
    writer.write_eof()
    answer = json.loads(await reader.readline())
    assert answer["id"] == 7
    assert answer["result"]["pong"] is True
    assert await reader.read() == b""
    writer.close()
