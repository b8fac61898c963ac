"""The gateway's connection guard: header and keep-alive deadlines, and the cap on open
connections (aiohttp sets neither)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.gateway.conftest import Fronted, GatewayFactory
from tests.gateway.test_openai import TWO
from tests.support import eventually, make_config

CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# Seconds a closed connection has to show it (it is closed long before).
CLOSE_BOUND_S = 10.0


async def _connect(front: Fronted) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = front.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


def _request(body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway closed the connection (reading ends, or is reset)."""
    try:
        return await asyncio.wait_for(reader.read(), CLOSE_BOUND_S) is not None
    except ConnectionResetError:
        return True


async def _metric(front: Fronted, http: aiohttp.ClientSession, name: str) -> float:
    async with http.get(front.url + "/metrics") as answer:
        for line in (await answer.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_headers_that_never_finish_are_cut_off_while_others_are_served(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Slowloris: a client trickling header bytes, and one that connects and sends
    nothing, are closed after header_timeout_s although bytes keep coming; a request
    on another connection is answered meanwhile."""
    front = await fronted(make_config(TWO, [80]), header_timeout_s=0.5)
    silent_reader, _ = await _connect(front)
    trickle_reader, trickle = await _connect(front)
    trickle.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def keep_trickling() -> None:
        # The attacker's pace: a header byte every 50 ms, for ever.
        while not trickle.is_closing():
            trickle.write(b"X")
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(keep_trickling())
    async with http.post(front.url + "/v1/chat/completions", json=CHAT) as answer:
        assert answer.status == 200
    assert await _closed(trickle_reader)
    assert await _closed(silent_reader)
    trickling.cancel()
    assert await _metric(front, http, "modeld_gateway_header_timeouts_total") >= 2


async def test_a_long_answer_and_a_kept_alive_connection_are_not_cut(
    fronted: GatewayFactory,
) -> None:
    """The header deadline stops while a request is served: an answer streaming for
    longer than it ends whole; the connection then takes a next request, and is
    closed once silent for keepalive_timeout_s."""
    front = await fronted(make_config(TWO, [80]), header_timeout_s=0.3, keepalive_timeout_s=0.5)
    await front.engine.models.switch("a")
    front.runtime.server("a").token_seconds = 0.1  # eight tokens: 0.8 s of answer
    reader, writer = await _connect(front)
    writer.write(_request({**CHAT, "max_tokens": 8, "stream": True}))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head
    assert (await reader.readuntil(b"data: [DONE]")).endswith(b"[DONE]")
    await reader.readuntil(b"0\r\n\r\n")  # the chunked answer's end
    writer.write(_request(CHAT))  # the same connection, kept alive
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert await _closed(reader)  # silent past keepalive_timeout_s
    writer.close()


async def test_connections_past_the_cap_are_closed_and_counted(
    fronted: GatewayFactory,
) -> None:
    """max_connections: one more connection is answered 503 and closed as it opens;
    once one of the open ones closes, a new one is served."""
    front = await fronted(make_config(TWO, [80]), max_connections=3)
    held = [await _connect(front) for _ in range(3)]

    async def full() -> bool:
        return front.server.gateway.guard.open == 3

    await eventually(full)
    extra_reader, _ = await _connect(front)
    refusal = await asyncio.wait_for(extra_reader.read(), CLOSE_BOUND_S)  # to its end
    assert refusal.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    held[0][1].close()

    async def room() -> bool:
        return front.server.gateway.guard.open < 3

    await eventually(room)
    reader, writer = await _connect(front)
    writer.write(_request(CHAT))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    metrics = front.server.gateway.metrics.exposition().decode()
    assert "modeld_gateway_connections_refused_total 1.0" in metrics
    for _, other in held[1:]:
        other.close()
    writer.close()
