"""The gateway over plain HTTP: keys, the allowlist, the seed's endpoints and shapes,
bad bodies, hang-ups, events, metrics."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from modeld.core.backend_keys import backend_keys
from modeld.core.states import State
from modeld.testing.fakes import Behaviour
from tests.gateway.conftest import KEY, GatewayFactory, RestartableFactory
from tests.gateway.test_openai import TWO
from tests.support import (
    SEED_GPU_FIELDS,
    SEED_MODEL_FIELDS,
    eventually,
    make_config,
    next_of,
    state_of,
)

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_every_endpoint_needs_a_key_when_keys_are_configured(
    fronted: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With keys (inline or from a file), inference, status, switch, events, metrics and
    health refuse a missing, malformed or wrong key with 401 and do nothing."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("# one per line\nsk-from-file-0123456789abcd\n")
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], api_keys_file=keys_file)
    calls = [
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/status", None),
        ("POST", "/v1/models/switch?target_model=a", None),
        ("POST", "/v1/models/a/start", None),
        ("GET", "/events", None),
        ("GET", "/metrics", None),
        ("GET", "/health", None),
    ]
    for header in (None, "Bearer", f"Basic {KEY}", "Bearer sk-not-the-key-000", f"Bearer {KEY}x"):
        headers = {"Authorization": header} if header else {}
        for method, path, body in calls:
            async with http.request(method, front.url + path, json=body, headers=headers) as answer:
                assert answer.status == 401, (header, path)
                error = (await answer.json())["error"]  # the seed's shape, or OpenAI's
                assert (error if isinstance(error, str) else error["code"]) == "unauthorized"
    assert front.runtime.starts("a") == 0
    for key in (KEY, "sk-from-file-0123456789abcd"):
        headers = {"Authorization": f"Bearer {key}"}
        async with http.get(front.url + "/v1/models", headers=headers) as answer:
            assert answer.status == 200


async def test_health_and_metrics_may_be_served_without_a_key_when_configured(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Load balancers and Prometheus send no key: `health_without_key` and
    `metrics_without_key` open those two routes, and nothing else; by default they
    need a key like everything."""
    closed = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    for path in ("/health", "/metrics"):
        async with http.get(closed.url + path) as answer:
            assert answer.status == 401, path
    front = await fronted(
        make_config(TWO, [80]), api_keys=[KEY], health_without_key=True, metrics_without_key=True
    )
    async with http.get(front.url + "/health") as answer:
        assert answer.status == 200
    async with http.get(front.url + "/metrics") as answer:
        assert answer.status == 200
        assert "modeld_gateway_requests_total" in await answer.text()
    for path in ("/v1/models", "/v1/models/status", "/events"):
        async with http.get(front.url + path) as answer:
            assert answer.status == 401, path


async def test_an_admin_reads_and_follows_a_backends_log_over_http(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`GET /v1/models/a/logs` gives the last lines as JSON; with `follow=true` they come
    as server-sent events until the backend ends (`event: end`). Inference keys are
    refused (a log may quote prompts); an unknown model is 404 before any stream."""
    inference = "sk-inference-0123456789abcd"
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY], inference_keys=[inference])
    await front.engine.models.switch("a")
    async with http.get(front.url + "/v1/models/a/logs?lines=5", headers=AUTH) as answer:
        assert answer.status == 200
        assert (await answer.json())["lines"] == ["a: CUDA error: out of memory"]
    reader = {"Authorization": f"Bearer {inference}"}
    async with http.get(front.url + "/v1/models/a/logs", headers=reader) as answer:
        assert answer.status == 403
    async with http.get(front.url + "/v1/models/nope/logs?follow=true", headers=AUTH) as answer:
        assert answer.status == 404
    url = front.url + "/v1/models/a/logs?follow=true"
    async with http.get(url, headers=AUTH) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        seen: list[bytes] = []
        async for line in answer.content:
            seen.append(line.strip())
            if line.startswith(b"data: {") and b"event: end" not in seen:
                said = json.loads(line[6:])
                assert said == {"model": "a", "line": "a: CUDA error: out of memory"}
                await front.engine.models.stop("a")  # the backend ends: so does the stream
    assert seen[-3:] == [b"event: end", b"data: {}", b""]


async def test_only_inference_paths_reach_a_backend(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """vLLM's admin endpoints (served by a dev-mode backend) are never reachable through
    the gateway, however the path is spelled; the backend stays awake."""
    config = make_config(
        {"a": {"gpu_memory_gb": 50, "sleep_mode": True, "env": {"VLLM_SERVER_DEV_MODE": "1"}}},
        [80],
        park_ram_gb=100,
    )
    front = await fronted(config)
    await front.engine.models.switch("a")
    server = front.runtime.server("a")
    for path in (
        "/sleep?level=1",
        "/wake_up",
        "/is_sleeping",
        "/collective_rpc",
        "/reset_prefix_cache",
        "/start_profile",
        "/v1/chat/completions/../../sleep",
        "/v1/%2e%2e/sleep",
        "//sleep",
        "/metrics/../sleep",
    ):
        async with http.post(front.url + path, json={"model": "a"}) as answer:
            assert answer.status in (404, 405), path
    assert not server.sleeping
    async with http.post(front.url + "/v1/chat/completions", json=CHAT) as answer:
        assert answer.status == 200


async def test_the_seeds_endpoints_answer_with_the_seeds_fields(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`GET /v1/models/status` and `POST /v1/models/switch?target_model=` as the seed's
    curl lines call them: the seed's fields, `already_loaded`, 404 for an unknown model
    and a non-2xx refusal with the seed's numbers."""
    # 75 GB fits the 80 GB GPU alone, not beside the 10 GB a process outside modeld holds.
    config = make_config(
        {**TWO, "huge": {"gpu_memory_gb": 75}}, [80], gpu={"external_used_gb": [10]}
    )
    front = await fronted(config, api_keys=[KEY])
    async with http.get(front.url + "/v1/models/status", headers=AUTH) as answer:
        status = await answer.json()
    assert all(view.keys() >= SEED_MODEL_FIELDS for view in status["models"].values())
    assert status["gpu"].keys() >= SEED_GPU_FIELDS
    switch = front.url + "/v1/models/switch?target_model="
    async with http.post(switch + "a", headers=AUTH) as answer:
        assert answer.status == 200
        done = await answer.json()
    assert done["status"] == "success" and done["unloaded_models"] == []
    assert done.keys() >= {"memory_info", "estimated_load_time_seconds"}
    async with http.post(switch + "b", headers=AUTH) as answer:
        assert (await answer.json())["unloaded_models"] == ["a"]
    async with http.post(switch + "b", headers=AUTH) as answer:
        assert (await answer.json())["status"] == "already_loaded"
    async with http.post(switch + "nope", headers=AUTH) as answer:
        assert answer.status == 404
        assert "not found" in (await answer.json())["detail"]
    async with http.post(switch + "huge", headers=AUTH) as answer:
        assert answer.status == 503
        refusal = await answer.json()
    assert refusal["status"] == "error" and refusal["error"] == "insufficient_memory"
    assert refusal.keys() >= {"required_gb", "available_gb", "freed_gb", "total_available_gb"}
    assert state_of(front.engine, "b") is State.RUNNING  # the refusal changed nothing


async def test_start_stop_restart_over_http(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """One model's start, restart and stop as HTTP posts."""
    front = await fronted(make_config(TWO, [80]))
    for action, state in (("start", State.RUNNING), ("restart", State.RUNNING)):
        async with http.post(f"{front.url}/v1/models/a/{action}") as answer:
            assert answer.status == 200, await answer.text()
        assert state_of(front.engine, "a") is state
    assert front.runtime.starts("a") == 2
    async with http.post(f"{front.url}/v1/models/a/stop") as answer:
        assert (await answer.json())["status"] == "stopped"
    async with http.post(f"{front.url}/v1/models/a/start") as answer:
        pass
    async with http.post(f"{front.url}/v1/models/b/start") as answer:
        assert answer.status == 503  # start never stops anything to make room
        assert (await answer.json())["would_stop"] == ["a"]


async def test_the_switch_takes_its_fields_as_a_json_body_too(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`{"target_model": "b", "wait": true}` switches as the query string does; a body
    that is not an object, or names a field the switch does not take, is a 400 that
    changes nothing."""
    front = await fronted(make_config(TWO, [80]))
    url = front.url + "/v1/models/switch"
    async with http.post(url, json={"target_model": "b", "wait": True}) as answer:
        assert answer.status == 200, await answer.text()
        assert (await answer.json())["status"] == "success"
    assert state_of(front.engine, "b") is State.RUNNING
    for body in (b"[1]", b"{oops", json.dumps({"target_model": "a", "targte": 1}).encode()):
        headers = {"Content-Type": "application/json"}
        async with http.post(url, data=body, headers=headers) as answer:
            assert answer.status == 400, body
            refusal = await answer.json()
        assert refusal["status"] == "error" and refusal["message"]
    async with http.post(url, json={"wait": False}) as answer:
        assert answer.status == 400
        assert "target_model is required" in (await answer.json())["message"]
    assert state_of(front.engine, "a") is State.STOPPED


async def test_a_wrong_method_is_405_with_the_methods_allowed(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Every route answers a method it does not take with 405 and `Allow`, in the
    route's error shape, and does nothing: GET on the switch (not a model named
    "switch"), GET on inference, POST on the list, DELETE on an action."""
    front = await fronted(make_config(TWO, [80]))
    for method, path, allowed in (
        ("GET", "/v1/models/switch", "POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/a/stop", "POST"),
        ("PUT", "/health", "GET"),
    ):
        async with http.request(method, front.url + path) as answer:
            assert answer.status == 405, (method, path)
            assert allowed in answer.headers["Allow"].split(","), answer.headers
            body = await answer.json()
        message = body["message"] if "status" in body else body["error"]["message"]
        assert method in message and allowed in message
    assert front.runtime.starts("a") == 0 and front.runtime.starts("b") == 0


async def test_bad_bodies_get_400_and_touch_nothing(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Not JSON, not an object, no model, a model of the wrong type, a body over the
    limit: each a clear error, and no model is started."""
    front = await fronted(make_config(TWO, [80]), max_body_bytes=4096)
    url = front.url + "/v1/chat/completions"
    for body, status in (
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"messages": []}', 400),
        (b'{"model": 7}', 400),
        (b'{"model": ""}', 400),
        (json.dumps({"model": "a", "pad": "x" * 5000}).encode(), 413),
    ):
        headers = {"Content-Type": "application/json"}
        async with http.post(url, data=body, headers=headers) as answer:
            assert answer.status == status, body[:40]
            error = (await answer.json())["error"]
            assert error["type"] == "invalid_request_error" and error["message"]
    assert front.runtime.starts("a") == 0


async def test_a_client_that_hangs_up_mid_stream_releases_at_once(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The client goes away mid-answer: the upstream request is cancelled and the lease
    ends, so a switch needing the model goes through without a drain."""
    front = await fronted(make_config(TWO, [80]))
    await front.engine.models.switch("a")
    server = front.runtime.server("a")
    server.token_seconds = 0.05
    body = {**CHAT, "max_tokens": 10_000, "stream": True}
    answer = await http.post(front.url + "/v1/chat/completions", json=body)
    assert (await answer.content.readline()).startswith(b"data: ")
    assert front.leases("a") == 1
    answer.close()  # hang up

    async def released() -> bool:
        return front.leases("a") == 0

    await eventually(released, timeout=10)
    endpoint = front.engine.view.status().models["a"].endpoint

    async def backend_stopped() -> bool:  # the upstream request was closed, as vLLM sees it
        async with http.get(endpoint + "/metrics") as metrics:
            return 'vllm:num_requests_running{model_name="a"} 0.0' in await metrics.text()

    await eventually(backend_stopped, timeout=10)
    result = await asyncio.wait_for(front.engine.models.switch("b"), 10)
    assert result.unloaded_models == ["a"]


async def test_a_client_that_stops_reading_is_cut_off_and_its_lease_ends(
    fronted: GatewayFactory,
) -> None:
    """A caller that keeps its connection open but stops reading the answer cannot hold
    its model's lease: past client_write_timeout_s it is cut off, the lease ends, and
    the backend stops generating."""
    front = await fronted(make_config(TWO, [80]), client_write_timeout_s=0.5)
    await front.engine.models.switch("a")
    host, port = front.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few KB
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    body = json.dumps({**CHAT, "max_tokens": 1_000_000, "stream": True}).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")  # then reads no more

    async def released() -> bool:
        return front.leases("a") == 0

    await eventually(released, timeout=30)
    assert not writer.is_closing()  # the caller never hung up: the gateway cut it off
    result = await asyncio.wait_for(front.engine.models.switch("b"), 10)
    assert result.unloaded_models == ["a"]
    writer.close()


async def test_a_client_that_hangs_up_while_its_model_loads_leaks_no_lease(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Gone before its model ran: the lease granted when the load ends is released, and
    nothing holds the model."""
    front = await fronted(make_config(TWO, [80]))
    front.runtime.behaviour["a"] = Behaviour(load_seconds=0.5)
    events = front.engine.events.subscribe()
    request = asyncio.create_task(http.post(front.url + "/v1/chat/completions", json=CHAT))
    await next_of(events, "state", model="a", to_state="loading")
    request.cancel()
    await next_of(events, "state", model="a", to_state="running")

    async def released() -> bool:
        view = front.engine.view.status().models["a"]
        return bool(view.leases == 0 and view.waiting == 0)

    await eventually(released, timeout=10)


async def test_a_switch_with_a_timeout_is_bounded_by_it(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`timeout` on the switch endpoint (query or body) reaches the daemon: a load longer
    than it is 504 `timeout` once it passes, and the load goes on; one within it is 200."""
    front = await fronted(make_config(TWO, [80]))
    front.runtime.behaviour["b"] = Behaviour(load_seconds=3.0)
    started = asyncio.get_running_loop().time()
    async with http.post(front.url + "/v1/models/switch?target_model=b&timeout=0.5") as answer:
        assert answer.status == 504, await answer.text()
        assert (await answer.json())["error"] == "timeout"
    assert asyncio.get_running_loop().time() - started < 2.5
    assert state_of(front.engine, "b") is State.LOADING  # a caller's timeout stops no load
    body = {"target_model": "b", "timeout": 30}
    async with http.post(front.url + "/v1/models/switch", json=body) as answer:
        assert answer.status == 200, await answer.text()
        assert (await answer.json())["model"] == "b"


async def test_models_busy_and_load_failures_have_their_own_statuses(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A switch that cannot drain in time is 409 `models_busy` naming the busy model; a
    request whose model fails to load is 503 `load_failed` with the daemon's reason."""
    front = await fronted(make_config(TWO, [80], drain_timeout_s=0.2))
    held = await front.engine.leases.acquire("a", owner=1)
    async with http.post(front.url + "/v1/models/switch?target_model=b") as answer:
        assert answer.status == 409
        refusal = await answer.json()
    assert refusal["error"] == "models_busy" and refusal["busy"] == {"a": 1}
    assert answer.headers["Retry-After"]
    front.engine.leases.release(held.lease, owner=1)
    await front.engine.models.stop("a")
    front.runtime.behaviour["b"] = Behaviour(exit_code=3)
    async with http.post(front.url + "/v1/chat/completions", json={**CHAT, "model": "b"}) as answer:
        assert answer.status == 503
        error = (await answer.json())["error"]
    assert error["code"] == "load_failed" and error["exit_code"] == 3
    # A gateway without keys serves everyone as an admin: the backend's lines come too
    # (test_team.py shows an inference key never gets them).
    assert any("CUDA error" in line for line in error["last_lines"])


async def test_events_stream_the_daemons_events(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`GET /events` is a server-sent event stream of modeld's events: a switch made
    elsewhere shows there as it happens."""
    front = await fronted(make_config(TWO, [80]))
    await asyncio.wait_for(front.server.gateway.link.connected.wait(), 10)
    async with http.get(front.url + "/events") as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert await stream.content.readline() == b": modeld events\n"
        await front.engine.models.switch("a")
        seen: list[dict[str, Any]] = []
        async for line in stream.content:
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1].get("to_state") == "running":
                    break
    assert [(e["type"], e.get("to_state")) for e in seen if e["type"] == "state"] == [
        ("state", "loading"),
        ("state", "running"),
    ]


async def test_metrics_count_requests_waits_and_errors(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """/metrics: requests by model and status, load waits, errors by code."""
    front = await fronted(make_config(TWO, [80]))
    async with http.post(front.url + "/v1/chat/completions", json=CHAT) as answer:
        assert answer.status == 200
    async with http.post(front.url + "/v1/chat/completions", json={"model": "x"}) as answer:
        assert answer.status == 404
    async with http.get(front.url + "/metrics") as answer:
        text = await answer.text()
    assert (
        'modeld_gateway_requests_total{model="a",path="/v1/chat/completions",status="200"} 1.0'
        in text
    )
    assert 'modeld_gateway_load_wait_seconds_count{model="a"} 1.0' in text
    assert 'modeld_gateway_errors_total{code="unknown_model"} 1.0' in text


async def test_the_gateway_reconnects_when_the_daemon_restarts(
    restartable: RestartableFactory, http: aiohttp.ClientSession
) -> None:
    """The daemon goes away: requests get 503 `daemon_unreachable` with Retry-After (not
    a hang: a router tries another host); when it is back on its socket, requests and
    the event relay work again, untouched."""
    front = await restartable(make_config(TWO, [80]))
    url = front.url + "/v1/chat/completions"
    async with http.post(url, json=CHAT) as answer:
        assert answer.status == 200
    await front.stop_daemon()
    async with http.post(url, json=CHAT) as answer:
        assert answer.status == 503
        assert (await answer.json())["error"]["code"] == "daemon_unreachable"
        assert answer.headers["Retry-After"] == "5"
    await front.start_daemon()

    async def answered() -> bool:  # (failed attempts are not retried for 0.5 s)
        async with http.post(url, json=CHAT) as answer:
            return answer.status == 200

    await eventually(answered, timeout=10)
    await asyncio.wait_for(front.link.connected.wait(), 30)  # the relay subscribed again


async def test_a_body_that_does_not_arrive_in_time_is_refused(fronted: GatewayFactory) -> None:
    """A sender that stops mid-body gets 408 at `body_timeout_s`, and nothing starts."""
    front = await fronted(make_config(TWO, [80]), body_timeout_s=0.3)
    host, port = front.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model": "a"'
    )
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert front.runtime.starts("a") == 0


async def test_a_model_served_under_another_name_gets_that_name(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`served_model_name`: the request names the model as modeld knows it; the backend
    gets the name it serves (vLLM would answer 404 to any other)."""
    config = make_config({"a": {"gpu_memory_gb": 10, "served_model_name": "org/model-a"}}, [80])
    front = await fronted(config)
    async with http.post(front.url + "/v1/chat/completions", json=CHAT) as answer:
        assert answer.status == 200
        assert (await answer.json())["model"] == "org/model-a"
    # A body too big to parse on the event loop takes the same way, off it.
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 400_000}]}
    async with http.post(front.url + "/v1/chat/completions", json=big) as answer:
        assert answer.status == 200
        assert (await answer.json())["model"] == "org/model-a"


async def test_a_stream_keeps_its_model_across_a_daemon_restart(
    restartable: RestartableFactory, http: aiohttp.ClientSession
) -> None:
    """The daemon restarts while an answer streams (a model in a container outlives
    it): the gateway takes the request's lease again on the new connection, so a switch
    needing that model drains it instead of cutting the stream."""
    front = await restartable(make_config(TWO, [80]))
    engine = front.engine
    events = engine.events.subscribe()
    await asyncio.wait_for(front.link.connected.wait(), 10)
    await engine.models.switch("a")
    front.runtime.server("a").token_seconds = 0.02
    body = {**CHAT, "max_tokens": 400, "stream": True}  # 8 s: it outlasts the restart
    answer = await http.post(front.url + "/v1/chat/completions", json=body)
    assert (await answer.content.readline()).startswith(b"data: ")
    await front.stop_daemon()

    def leases(count: int) -> Callable[[], Awaitable[bool]]:
        async def held() -> bool:
            return bool(engine.view.status().models["a"].leases == count)

        return held

    await eventually(leases(0), timeout=10)  # the old connection's lease ended with it
    await front.start_daemon()
    await eventually(leases(1), timeout=20)  # renewed by the gateway
    switching = asyncio.create_task(engine.models.switch("b"))
    await next_of(events, "drain", model="a")  # waits for the stream, does not cut it
    rest = await answer.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert (await asyncio.wait_for(switching, 20)).unloaded_models == ["a"]


async def test_a_backend_with_its_own_key_is_reached_with_that_key(
    fronted: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`api_key_file`: the backend starts demanding that key on /v1 (as vLLM with
    --api-key); the gateway sends it in place of the caller's key; a file holding
    another key gives 502 `upstream_unauthorized`, not a 401 blaming the caller."""
    backend_key = tmp_path / "backend.key"
    backend_key.write_text("backend-secret-1\n")
    config = make_config({"a": {"gpu_memory_gb": 10, "api_key_file": str(backend_key)}}, [80])
    front = await fronted(config, api_keys=[KEY])
    async with http.post(front.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as answer:
        assert answer.status == 200
    endpoint = config.models["a"].endpoint
    async with http.post(endpoint + "/v1/chat/completions", json=CHAT, headers=AUTH) as direct:
        assert direct.status == 401  # the backend asks for its own key, not the gateway's
    async with http.get(endpoint + "/health") as health:
        assert health.status == 200  # as vLLM: health needs no key
    # Rotated: the restarted backend wants the new key, the gateway still sends the old.
    backend_key.write_text("backend-secret-2\n")
    async with http.post(front.url + "/v1/models/a/restart", headers=AUTH) as restarted:
        assert restarted.status == 200
    async with http.post(front.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as answer:
        assert answer.status == 502
        assert (await answer.json())["error"]["code"] == "upstream_unauthorized"
    # What SIGHUP does: the gateway reads the files again.
    front.server.gateway.backend_keys.replace(backend_keys(config))
    async with http.post(front.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as answer:
        assert answer.status == 200
