"""What requests waiting for a load may hold, shared among keys: a place in the queue and
their bodies as sent. One key that floods is refused past its share while every other
key, and the admins, still wait as usual; a waiting compressed body costs what was sent."""

from __future__ import annotations

import asyncio
import gzip
import json
import re

import aiohttp

from modeld.core.states import State
from modeld.testing.fakes import Behaviour
from tests.gateway.conftest import KEY, Fronted, GatewayFactory
from tests.gateway.test_openai import TWO
from tests.gateway.test_team import ALICE, BOB, INFERENCE, bearer, chat
from tests.support import eventually, make_config, wait_for_state

CAROL = "sk-inference-carol-0123456789"
# Long enough for every step below to happen while b loads.
LOAD_S = 6.0


async def _gauge(http: aiohttp.ClientSession, front: Fronted, name: str) -> float:
    async with http.get(front.url + "/metrics", headers=bearer(KEY)) as answer:
        text = await answer.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


async def _waiting(http: aiohttp.ClientSession, front: Fronted, count: int) -> None:
    async def there() -> bool:
        return await _gauge(http, front, "modeld_gateway_requests_waiting") == count

    await eventually(there)


def _send(
    http: aiohttp.ClientSession, front: Fronted, key: str, data: bytes, **headers: str
) -> asyncio.Task[tuple[int, str, str | None]]:
    """A request for b as a task: its status, error code (if any) and Retry-After."""

    async def one() -> tuple[int, str, str | None]:
        all_headers = {**bearer(key), "Content-Type": "application/json", **headers}
        url = front.url + "/v1/chat/completions"
        async with http.post(url, data=data, headers=all_headers) as answer:
            body = await answer.json(content_type=None)
            code = body.get("error", {}).get("code", "") if answer.status != 200 else ""
            return answer.status, code, answer.headers.get("Retry-After")

    return asyncio.create_task(one())


async def _loading_b(fronted: GatewayFactory, **settings: object) -> Fronted:
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], **settings)
    front.runtime.behaviour["b"] = Behaviour(load_seconds=LOAD_S)
    await front.engine.models.switch("b", wait=False)
    await wait_for_state(front.engine, "b", {State.LOADING}, timeout=10)
    return front


async def test_one_key_cannot_take_anothers_place_in_the_queue_or_lock_out_admins(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """max_queue = 4 and two inference keys: alice's share is 2. While b loads, her third
    waiting request is 429 key_queue_full with Retry-After at once; bob still gets both
    of his places, and an admin waits beside them all. Every waiting request is served
    once b runs, with one load."""
    front = await _loading_b(fronted, inference_keys=INFERENCE, max_queue=4)
    body = json.dumps(chat("b")).encode()
    alices = [_send(http, front, ALICE, body) for _ in range(2)]
    await _waiting(http, front, 2)
    async with asyncio.timeout(2):  # at once, not after the load
        assert await _send(http, front, ALICE, body) == (429, "key_queue_full", "5")
    others = [_send(http, front, BOB, body) for _ in range(2)]
    others.append(_send(http, front, KEY, body))
    await _waiting(http, front, 5)
    served = await asyncio.gather(*alices, *others)
    assert served == [(200, "", None)] * 5
    assert front.runtime.starts("b") == 1


async def test_waiting_requests_hold_their_bodies_as_sent_within_each_keys_share(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A gzip body that inflates to 12 KB waits for b holding only what was sent (under
    1 KB). Bodies sent plain count whole: with three inference keys sharing 32 KiB (each
    key's share is one 16 KiB body), alice's second 12 KB body is 429 key_bodies_full,
    bob's fits, carol's finds the gateway's bound reached (503 bodies_full), an admin's
    still waits; all with Retry-After, and those waiting are served once b runs."""
    front = await _loading_b(
        fronted,
        inference_keys=[*INFERENCE, f"carol {CAROL}"],
        max_body_bytes=16 * 1024,
        max_waiting_bytes=32 * 1024,
    )
    padded = json.dumps(chat("b", user="x" * 12_000)).encode()
    squeezed = _send(http, front, ALICE, gzip.compress(padded), **{"Content-Encoding": "gzip"})
    await _waiting(http, front, 1)
    held = await _gauge(http, front, "modeld_gateway_waiting_body_bytes")
    assert 0 < held < 1024
    plain = json.dumps(chat("b", user="x" * 12_000)).encode()
    first = _send(http, front, ALICE, plain)
    await _waiting(http, front, 2)
    assert await _send(http, front, ALICE, plain) == (429, "key_bodies_full", "5")
    bobs = _send(http, front, BOB, plain)
    await _waiting(http, front, 3)
    assert await _send(http, front, CAROL, plain) == (503, "bodies_full", "5")
    admins = _send(http, front, KEY, plain)
    await _waiting(http, front, 4)
    assert list(await asyncio.gather(squeezed, first, bobs, admins)) == [(200, "", None)] * 4
    assert await _gauge(http, front, "modeld_gateway_waiting_body_bytes") == 0
