"""Lease batching: the gateway's requests for a model share one standing lease (no
round trip each), and nothing of the lease guarantees is given up: the daemon's count of
requests in flight stays exact, a model with one in flight is never moved, and a switch
that needs the model drains the lingering lease at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modeld.client import Client
from modeld.core.states import State
from modeld.gateway import standing
from modeld.wire.results import LeaseUpdated
from tests.gateway.conftest import KEY, GatewayFactory
from tests.gateway.test_openai import TWO
from tests.gateway.test_team import bearer, chat, post
from tests.support import eventually, make_config, next_of, state_of


async def test_requests_share_a_standing_lease_and_the_count_stays_exact(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Requests one after another and two at once: the daemon counts exactly the
    requests in flight (2 while both stream, 0 once done), and its one standing lease
    for them lingers after the last, so the next request asks the daemon nothing."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    url = f"{front.url}/v1/chat/completions"
    for _ in range(3):
        assert (await post(http, url, chat("a")))[0] == 200
    front.runtime.server("a").token_seconds = 0.02
    body = chat("a", max_tokens=30, stream=True)
    async with (
        http.post(url, json=body, headers=bearer(KEY)) as one,
        http.post(url, json=body, headers=bearer(KEY)) as two,
    ):
        await one.content.readline()
        await two.content.readline()

        async def both() -> bool:
            return front.leases("a") == 2

        await eventually(both)
        await one.read()
        await two.read()

    async def none() -> bool:
        return front.leases("a") == 0

    await eventually(none)
    status = front.engine.view.status()
    assert status.models["a"].leases == 0 and status.models["a"].status == "running"


async def test_requests_one_after_another_send_the_daemon_no_update_each(
    fronted: GatewayFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests one after another on a held standing lease tell the daemon nothing each
    (their counts wait for the next report, here a minute away): the daemon meanwhile
    counts one in flight, never none. A request for another model sends the counts first
    (the switch it may cause is planned from exact ones): then the daemon counts none."""
    monkeypatch.setattr(standing, "REPORT_S", 60.0)
    front = await fronted(make_config(TWO, [120]), api_keys=[KEY])
    updates: list[int] = []
    told = front.engine.leases.update

    def counted(lease: str, **counts: Any) -> LeaseUpdated:
        updates.append(counts["in_flight"])
        return told(lease, **counts)

    monkeypatch.setattr(front.engine.leases, "update", counted)
    url = f"{front.url}/v1/chat/completions"
    for _ in range(20):
        assert (await post(http, url, chat("a")))[0] == 200
    assert updates == [] and front.leases("a") == 1
    status, _, answer = await post(http, url, chat("b"))
    assert status == 200 and answer["choices"][0]["message"]["content"] == "b ok"
    assert updates == [0] and front.leases("a") == 0


async def test_a_switch_drains_a_lingering_lease_at_once(
    fronted: GatewayFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a request, its model's standing lease lingers (here for a minute)
    with nothing in flight: a switch that needs the memory drains it, the gateway lets
    go at the drain event, and the model is stopped long before the linger would end;
    the other model then answers."""
    monkeypatch.setattr(standing, "LINGER_S", 60.0)
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    url = f"{front.url}/v1/chat/completions"
    assert (await post(http, url, chat("a")))[0] == 200
    events = front.engine.events.subscribe()
    switched = await asyncio.wait_for(front.engine.models.switch("b"), 20)
    assert switched.status == "success"
    await next_of(events, "drain", model="a")
    assert state_of(front.engine, "a") is State.STOPPED
    status, _, answer = await post(http, url, chat("b"))
    assert status == 200 and answer["choices"][0]["message"]["content"] == "b ok"


async def test_counts_to_a_daemon_that_stops_reading_are_bounded(tmp_path: Path) -> None:
    """A peer on the socket that never reads: notifications (a standing lease's counts)
    stop being written once a bounded amount waits to be sent, instead of growing the
    notifier's memory; they say so (not sent), so the counts are kept for later."""
    path = tmp_path / "deaf.sock"
    accepted = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await asyncio.Event().wait()  # never reads

    server = await asyncio.start_unix_server(deaf, path=str(path))
    async with server, Client(path) as client:
        await accepted.wait()
        sent = 0
        while client.notify("lease_update", lease="x" * 64, in_flight=1, served=1):
            sent += 1
            assert sent < 1_000_000, "never refused: unbounded"
        # Each line is about 120 bytes: what was written is the bound plus what the
        # kernel's socket buffers took (a few hundred KiB), never more.
        assert sent * 120 <= Client.NOTIFY_BUFFER_BYTES + 4 * 1024 * 1024
        assert not client.notify("lease_update", lease="x", in_flight=0)
        server.close()
