"""A gateway a team shares: admin and inference keys, load budgets per key, and callers
that cannot hurt each other (bad names, backends' output, the link to the daemon)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from modeld.core.errors import ConfigError
from modeld.core.gateway_config import GatewayConfig
from modeld.core.gateway_keys import Role, read_keys
from modeld.core.states import State
from modeld.gateway.auth import Keys
from modeld.testing.fakes import Behaviour
from tests.gateway.conftest import KEY, GatewayFactory
from tests.gateway.test_openai import TWO
from tests.support import eventually, make_config, next_of, state_of

ALICE = "sk-inference-alice-0123456789"
BOB = "sk-inference-bob-0123456789"
INFERENCE = [f"alice {ALICE}", f"bob {BOB}"]


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for `key`."""
    return {"Authorization": f"Bearer {key}"}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    """A small chat request for `model`."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        **extra,
    }


async def post(
    http: aiohttp.ClientSession, url: str, body: Any = None, key: str = KEY, **headers: str
) -> tuple[int, dict[str, str], Any]:
    """POST (JSON when `body` is given); status, headers and the JSON answer."""
    async with http.post(url, json=body, headers={**bearer(key), **headers}) as answer:
        return answer.status, dict(answer.headers), await answer.json(content_type=None)


async def test_inference_keys_infer_and_read_but_never_start_stop_switch_or_force(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """An inference key runs inference and reads the model list, one model, the status,
    events and health; every endpoint that starts, stops, switches or forces (and the
    metrics, which name the keys) is 403 permission_denied for it and changes nothing."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], inference_keys=INFERENCE)
    status, _, answer = await post(http, f"{front.url}/v1/chat/completions", chat("a"), ALICE)
    assert status == 200 and answer["model"] == "a"
    for path in ("/v1/models", "/v1/models/a", "/v1/models/status", "/health"):
        async with http.get(front.url + path, headers=bearer(ALICE)) as reading:
            assert reading.status == 200, path
    async with http.get(front.url + "/events", headers=bearer(ALICE)) as stream:
        assert stream.status == 200
    refused = [
        "/v1/models/switch?target_model=b",
        "/v1/models/switch?target_model=b&force=true",
        "/v1/models/b/start",
        "/v1/models/a/restart",
        "/v1/models/a/stop",
        "/v1/models/a/stop?force=true",
    ]
    for path in refused:
        status, _, answer = await post(http, front.url + path, key=ALICE)
        assert status == 403, path
        assert answer["error"] == "permission_denied" and "alice" in answer["message"]
    async with http.get(front.url + "/metrics", headers=bearer(ALICE)) as metrics:
        assert metrics.status == 403
    assert state_of(front.engine, "a") is State.RUNNING
    assert front.runtime.starts("b") == 0 and front.runtime.starts("a") == 1
    status, _, _ = await post(http, front.url + "/v1/models/a/stop", key=KEY)
    assert status == 200  # the admin key may


async def test_a_key_past_its_load_budget_gets_429_and_running_models_are_still_served(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Alternating two models that cannot share the GPU: a budgeted key causes at most
    key_loads_per_minute loads, then 429 load_rate_limited with Retry-After; requests for
    the model that runs are still served, another key and the admin are not held back,
    and the metrics count loads and refusals by key name."""
    front = await fronted(
        make_config(TWO, [80]), api_keys=[KEY], inference_keys=INFERENCE, key_loads_per_minute=2
    )
    url = f"{front.url}/v1/chat/completions"
    assert (await post(http, url, chat("a"), ALICE))[0] == 200  # load 1
    assert (await post(http, url, chat("b"), ALICE))[0] == 200  # load 2
    refused_at = asyncio.get_running_loop().time()
    status, headers, answer = await post(http, url, chat("a"), ALICE)
    # Answered after a second: a client retrying in a loop costs others next to nothing.
    assert asyncio.get_running_loop().time() - refused_at >= 0.9
    assert status == 429 and answer["error"]["code"] == "load_rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert answer["error"]["limit"] == 2
    assert front.runtime.starts("a") == 1 and state_of(front.engine, "b") is State.RUNNING
    for _ in range(3):  # b runs: always served
        assert (await post(http, url, chat("b"), ALICE))[0] == 200
    assert (await post(http, url, chat("a"), BOB))[0] == 200  # bob's own budget
    assert (await post(http, url, chat("b"), KEY))[0] == 200  # admins are not budgeted
    assert (await post(http, url, chat("a"), KEY))[0] == 200
    assert front.runtime.starts("a") == 3 and front.runtime.starts("b") == 2
    async with http.get(front.url + "/metrics", headers=bearer(KEY)) as metrics:
        text = await metrics.text()
    assert 'modeld_gateway_key_loads_total{key="alice"} 2.0' in text
    assert 'modeld_gateway_key_loads_total{key="bob"} 1.0' in text
    assert 'modeld_gateway_key_loads_refused_total{key="alice"} 1.0' in text
    assert ALICE not in text and BOB not in text


async def test_requests_that_join_a_load_under_way_spend_no_more_of_the_budget(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A key with a budget of one load asks for b, whose load must first wait for a's
    lease to drain; its further requests for b meanwhile (b still stopped) join that
    load instead of each spending the budget: all are served by one start of b."""
    front = await fronted(
        make_config(TWO, [80]), api_keys=[KEY], inference_keys=INFERENCE, key_loads_per_minute=1
    )
    events = front.engine.events.subscribe()
    held = await front.engine.leases.acquire("a", owner=1)
    url = f"{front.url}/v1/chat/completions"
    first = asyncio.create_task(post(http, url, chat("b"), ALICE))
    await next_of(events, "drain", model="a")  # b's load waits for a's lease
    assert state_of(front.engine, "b") is State.STOPPED
    more = [asyncio.create_task(post(http, url, chat("b"), ALICE)) for _ in range(5)]

    async def all_waiting() -> bool:
        return bool(front.engine.view.status().models["b"].waiting == 6)

    await eventually(all_waiting, timeout=10)
    front.engine.leases.release(held.lease, owner=1)
    answers = await asyncio.gather(first, *more)
    assert [status for status, _, _ in answers] == [200] * 6
    assert front.runtime.starts("b") == 1
    async with http.get(front.url + "/metrics", headers=bearer(KEY)) as metrics:
        text = await metrics.text()
    assert 'modeld_gateway_key_loads_total{key="alice"} 1.0' in text
    assert 'modeld_gateway_key_loads_refused_total{key="alice"}' not in text


async def test_a_huge_model_name_leaves_another_callers_stream_whole_through_a_switch(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A request whose `model` is a 1.1 MB string is refused (400) without reaching the
    daemon; the lease of another caller's stream survives it, so a plain switch that
    needs that model's memory waits for the stream (drains) instead of cutting it."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    events = front.engine.events.subscribe()
    url = f"{front.url}/v1/chat/completions"
    assert (await post(http, url, chat("a")))[0] == 200
    front.runtime.server("a").token_seconds = 0.01
    async with http.post(url, json=chat("a", max_tokens=60, stream=True), headers=bearer(KEY)) as s:
        first = await s.content.readline()
        assert first.startswith(b"data: ")
        status, _, answer = await post(http, url, chat("x" * 1_100_000))
        assert status == 400 and answer["error"]["code"] == "bad_request"
        assert front.leases("a") == 1
        switch = asyncio.create_task(front.engine.models.switch("b"))
        await next_of(events, "drain", model="a")  # waits for the stream, cuts nothing
        rest = await s.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert rest.count(b" ok") == 59
    assert (await switch).status == "success"
    assert state_of(front.engine, "a") is State.STOPPED


async def test_invented_names_are_404_without_asking_the_daemon_and_share_one_label(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Names no config holds are 404 unknown_model even with the daemon gone (it is not
    asked), names no config could hold are 400, and all of them share the metric label
    `unknown`: /metrics stays small however many are invented."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    url = f"{front.url}/v1/chat/completions"
    for number in range(60):
        status, _, answer = await post(http, url, chat(f"invented-{number}"))
        assert status == 404 and answer["error"]["code"] == "unknown_model"
        status, _, _ = await post(http, url, chat(f"{number}" + "y" * 100_000))
        assert status == 400
    async with http.get(front.url + "/metrics", headers=bearer(KEY)) as metrics:
        text = await metrics.text()
    assert len(text.encode()) < 64 * 1024
    assert 'model="unknown",path="/v1/chat/completions",status="404"} 60.0' in text
    assert "invented" not in text
    await front.server.gateway.link.close()  # no daemon to ask any more
    status, _, answer = await post(http, url, chat("invented-again"))
    assert status == 404


async def test_backends_output_reaches_admins_only(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A load that fails: its error, and the status, carry the backend's last lines for
    an admin key and never for an inference key."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], inference_keys=INFERENCE)
    front.runtime.behaviour["a"] = Behaviour(exit_code=1)
    url = f"{front.url}/v1/chat/completions"
    status, _, answer = await post(http, url, chat("a"), ALICE)
    assert status == 503 and answer["error"]["code"] == "load_failed"
    assert "CUDA" not in json.dumps(answer)
    async with http.get(front.url + "/v1/models/status", headers=bearer(ALICE)) as reading:
        assert "CUDA" not in await reading.text()
    status, _, answer = await post(http, url, chat("a"), KEY)
    assert status == 503 and "CUDA error" in json.dumps(answer["error"]["last_lines"])
    async with http.get(front.url + "/v1/models/status", headers=bearer(KEY)) as reading:
        assert "CUDA error" in await reading.text()


async def test_a_keyless_gateway_refuses_foreign_origins_hosts_and_non_json(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Without keys (the loopback default), what a foreign web page could send is
    refused and nothing switches: a cross-site switch (CSRF), a foreign Host (DNS
    rebinding), a text/plain body. The gateway's own origin and the allowed ones pass,
    the latter with CORS answered (preflight included)."""
    allowed = "https://tools.example.org"
    front = await fronted(make_config(TWO, [80]), allowed_origins=[allowed])
    switch = f"{front.url}/v1/models/switch?target_model=a"
    async with http.post(switch, headers={"Origin": "https://evil.example"}) as answer:
        assert answer.status == 403 and (await answer.json())["error"] == "forbidden_origin"
    async with http.post(switch, headers={"Origin": "null"}) as answer:
        assert answer.status == 403
    async with http.post(switch, headers={"Host": "evil.example:8080"}) as answer:
        assert answer.status == 403 and (await answer.json())["error"] == "forbidden_host"
    infer = f"{front.url}/v1/chat/completions"
    plain = json.dumps(chat("a"))
    async with http.post(infer, data=plain, headers={"Content-Type": "text/plain"}) as answer:
        assert answer.status == 415
    async with http.post(switch, data="x", headers={"Content-Type": "text/plain"}) as answer:
        assert answer.status == 415
    assert front.runtime.starts("a") == 0

    preflight = {"Origin": allowed, "Access-Control-Request-Method": "POST"}
    async with http.options(infer, headers=preflight) as answer:
        assert answer.status == 204
        assert answer.headers["Access-Control-Allow-Origin"] == allowed
        assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
    async with http.post(infer, json=chat("a"), headers={"Origin": allowed}) as answer:
        assert answer.status == 200
        assert answer.headers["Access-Control-Allow-Origin"] == allowed
    own = front.url  # the dashboard's own origin
    async with http.post(switch, headers={"Origin": own}) as answer:
        assert answer.status == 200
        assert "Access-Control-Allow-Origin" not in answer.headers


async def test_the_page_and_its_files_are_served_with_strict_headers(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`/`, its script and an API answer carry a CSP without inline script, frame
    denial, nosniff and no-referrer."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    for path in ("/", "/static/app.js", "/static/style.css", "/v1/models/status"):
        async with http.get(front.url + path, headers=bearer(KEY)) as answer:
            assert answer.status == 200, path
            policy = answer.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy
            assert "frame-ancestors 'none'" in policy
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["Referrer-Policy"] == "no-referrer"


async def test_an_answer_read_whole_with_connection_close_is_a_200_not_a_hangup(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """curl, urllib and most scripts send `Connection: close` and read the whole answer:
    that is a 200 in the metrics, never a 499 hang-up."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    url = f"{front.url}/v1/chat/completions"
    for stream in (False, True):
        headers = {**bearer(KEY), "Connection": "close"}
        async with http.post(url, json=chat("a", stream=stream), headers=headers) as answer:
            assert answer.status == 200
            await answer.read()
    # The access log's line and the metric are written as the handler ends, which may
    # be just after the client has its last byte: wait for the server to be idle.
    gateway = front.server.gateway

    async def idle() -> bool:
        return gateway.proxy.in_flight == 0

    await eventually(idle, timeout=10)
    text = gateway.metrics.exposition().decode()
    assert 'path="/v1/chat/completions",status="200"} 2.0' in text
    assert 'status="499"' not in text
    assert "modeld_gateway_client_hangups_total 0.0" in text


async def test_a_client_holds_at_most_its_share_of_event_streams(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """One key cannot take every /events stream: past max_event_streams_per_client it is
    429 while another key still gets its own."""
    front = await fronted(
        make_config(TWO, [80]),
        api_keys=[KEY],
        inference_keys=INFERENCE,
        max_event_streams_per_client=2,
    )
    opened = [await http.get(front.url + "/events", headers=bearer(ALICE)) for _ in range(2)]
    try:
        assert all(stream.status == 200 for stream in opened)
        async with http.get(front.url + "/events", headers=bearer(ALICE)) as third:
            assert third.status == 429
        async with http.get(front.url + "/events", headers=bearer(BOB)) as other:
            assert other.status == 200
    finally:
        for stream in opened:
            stream.close()


async def test_an_answer_past_max_request_s_is_cut_and_its_lease_released(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A stream still going after max_request_s ends abruptly (never as if complete) and
    its model's lease is released (the daemon hears the end at the standing lease's next
    report)."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], max_request_s=1.0)
    url = f"{front.url}/v1/chat/completions"
    assert (await post(http, url, chat("a")))[0] == 200
    front.runtime.server("a").token_seconds = 0.05
    async with http.post(
        url, json=chat("a", max_tokens=1000, stream=True), headers=bearer(KEY)
    ) as s:
        assert s.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await s.read()

    async def released() -> bool:
        return front.leases("a") == 0

    await eventually(released)


async def test_the_query_string_reaches_the_backend_as_sent(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The query string is forwarded byte for byte (not decoded and quoted again)."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    query = "a=%2F%20x&b=1+2&c=%E2%9C%93"
    sent = URL(f"{front.url}/v1/chat/completions?{query}", encoded=True)
    async with http.post(sent, json=chat("a"), headers=bearer(KEY)) as answer:
        assert answer.status == 200
    assert front.runtime.server("a").last_query == query


async def test_compressed_bodies_are_bounded_after_decompression(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A gzip body is inflated and served; one that inflates past max_body_bytes is 413
    (inflating stops there); an unknown encoding is 415; a body whose parse would build
    too many objects is 413 without being parsed."""
    import gzip

    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], max_body_bytes=1024 * 1024)
    url = f"{front.url}/v1/chat/completions"
    headers = {**bearer(KEY), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    small = gzip.compress(json.dumps(chat("a")).encode())
    async with http.post(url, data=small, headers=headers) as answer:
        assert answer.status == 200 and (await answer.json())["model"] == "a"
    bomb = gzip.compress(b'{"model": "a", "pad": "' + b"0" * 30 * 2**20 + b'"}')
    assert len(bomb) < 64 * 1024
    async with http.post(url, data=bomb, headers=headers) as answer:
        assert answer.status == 413 and (await answer.json())["error"]["code"] == "too_large"
    async with http.post(url, data=small, headers={**headers, "Content-Encoding": "br"}) as answer:
        assert answer.status == 415
    roomy = await fronted(make_config(TWO, [80]), api_keys=[KEY])  # 16 MiB bodies
    plain = {**bearer(KEY), "Content-Type": "application/json"}
    url = f"{roomy.url}/v1/chat/completions"
    for count, expected in ((100_000, 200), (5_000_000, 413)):
        nested = b'{"model": "a", "messages": [], "x": [' + b"[]," * count + b"[]]}"
        async with http.post(url, data=nested, headers=plain) as answer:
            assert answer.status == expected, count
            if expected == 413:
                assert "too many values" in (await answer.json())["error"]["message"]


def test_key_files_fail_closed(tmp_path: Path) -> None:
    """A key file that is missing, unreadable or empty is a configuration error (the
    gateway does not start); a reload that would leave no key keeps the keys in force."""
    empty = tmp_path / "keys"
    empty.write_text("# every key was removed\n\n")
    for missing in (empty, tmp_path / "absent"):
        with pytest.raises(ConfigError):
            read_keys(GatewayConfig(inference_keys_file=missing))
    keys = Keys(read_keys(GatewayConfig(api_keys=[KEY], inference_keys=INFERENCE)))
    with pytest.raises(ConfigError):
        keys.replace([])
    alice = keys.identify(f"Bearer {ALICE}")
    assert alice is not None and alice.role is Role.INFERENCE and alice.name == "alice"
    admin = keys.identify(f"Bearer {KEY}")
    assert admin is not None and admin.admin and admin.name.startswith("key-")
    assert KEY not in admin.name
    with pytest.raises(ConfigError):  # one key, two roles
        read_keys(GatewayConfig(api_keys=[KEY], inference_keys=[KEY]))


async def test_leases_are_taken_again_at_once_when_the_lease_connection_drops(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The gateway's lease connection drops while the daemon runs on (its events
    connection untouched): the lease of a request still streaming is taken again at
    once, so a plain switch that needs its model's memory drains it instead of cutting
    the stream."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    events = front.engine.events.subscribe()
    url = f"{front.url}/v1/chat/completions"
    assert (await post(http, url, chat("a")))[0] == 200
    front.runtime.server("a").token_seconds = 0.01
    long = chat("a", max_tokens=80, stream=True)
    async with http.post(url, json=long, headers=bearer(KEY)) as stream:
        assert (await stream.content.readline()).startswith(b"data: ")
        assert front.leases("a") == 1
        # The connection goes (as when a daemon drops a misbehaving client's).
        await front.server.gateway.link._leases.close()

        async def renewed() -> bool:
            return front.leases("a") == 1 and front.server.gateway.link.renewals > 0

        await eventually(renewed, timeout=10)
        switch = asyncio.create_task(front.engine.models.switch("b"))
        await next_of(events, "drain", model="a")
        rest = await stream.read()
    assert rest.rstrip().endswith(b"data: [DONE]") and rest.count(b" ok") == 79
    assert (await switch).status == "success"


async def test_one_inference_key_holds_at_most_its_share_of_requests(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Past max_requests_per_key in flight, an inference key's next request is 429 at
    once, while another key and the admin are served."""
    front = await fronted(
        make_config(TWO, [80]), api_keys=[KEY], inference_keys=INFERENCE, max_requests_per_key=1
    )
    url = f"{front.url}/v1/chat/completions"
    assert (await post(http, url, chat("a"), ALICE))[0] == 200
    front.runtime.server("a").token_seconds = 0.01
    long = chat("a", max_tokens=40, stream=True)
    async with http.post(url, json=long, headers=bearer(ALICE)) as held:
        assert (await held.content.readline()).startswith(b"data: ")
        status, headers, answer = await post(http, url, chat("a"), ALICE)
        assert status == 429 and "max_requests_per_key" in answer["error"]["message"]
        assert "Retry-After" in headers
        assert (await post(http, url, chat("a"), BOB))[0] == 200
        assert (await post(http, url, chat("a"), KEY))[0] == 200
        await held.read()

    async def ended() -> bool:  # its handler ends just after the last byte
        return front.server.gateway.proxy.in_flight == 0

    await eventually(ended, timeout=10)
    assert (await post(http, url, chat("a"), ALICE))[0] == 200


async def test_any_key_that_may_read_sees_a_switchs_plan_and_the_history(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`GET /v1/models/NAME/plan` (an alias too) answers the daemon's dry run to an
    inference key: what would stop, the memory, the estimate; no model starts or stops.
    `GET /v1/history` tells what was done."""
    config = make_config(TWO, [80])
    config.models["b"].aliases.append("gpt-4o")
    front = await fronted(config, api_keys=[KEY], inference_keys=INFERENCE)
    await front.engine.models.switch("a")
    async with http.get(front.url + "/v1/models/gpt-4o/plan", headers=bearer(ALICE)) as answer:
        assert answer.status == 200, await answer.text()
        plan = await answer.json()
    assert plan["model"] == "b" and plan["action"] == "start" and plan["stop"] == ["a"]
    assert plan["memory_info"]["required_gb"] > plan["memory_info"]["available_before_gb"]
    assert plan["estimated_seconds"] is not None and plan["candidates"][0]["name"] == "a"
    async with http.get(front.url + "/v1/models/nope/plan", headers=bearer(ALICE)) as answer:
        assert answer.status == 404
    history = front.url + "/v1/history?model=a&limit=5"
    async with http.get(history, headers=bearer(ALICE)) as answer:
        assert answer.status == 200
        entries = (await answer.json())["entries"]
    assert entries[-1]["model"] == "a" and entries[-1]["to_state"] == "running"
    assert len(entries) <= 5
    assert state_of(front.engine, "a") is State.RUNNING
    assert state_of(front.engine, "b") is State.STOPPED


async def test_admins_see_the_latest_requests_without_their_bodies(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`GET /v1/requests` lists what was answered (model, path, status, seconds, key),
    never a body; an invented model name shows as `unknown`; inference keys may not
    read it (it names every key)."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], inference_keys=INFERENCE)
    status, _, _ = await post(http, front.url + "/v1/chat/completions", chat("a"), key=ALICE)
    assert status == 200
    status, _, _ = await post(http, front.url + "/v1/chat/completions", chat("secret"), key=BOB)
    assert status == 404
    async with http.get(front.url + "/v1/requests", headers=bearer(ALICE)) as answer:
        assert answer.status == 403
    async with http.get(front.url + "/v1/requests", headers=bearer(KEY)) as answer:
        assert answer.status == 200
        listed = (await answer.json())["requests"]
    assert [(r["model"], r["status"], r["key"]) for r in listed] == [
        ("a", 200, "alice"),
        ("unknown", 404, "bob"),
    ]
    assert set(listed[0]) == {
        "at",
        "model",
        "path",
        "status",
        "seconds",
        "key",
        "error",
        "streamed",
    }
    assert "secret" not in json.dumps(listed) and "hi" not in json.dumps(listed)
