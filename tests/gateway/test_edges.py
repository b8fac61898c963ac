"""The gateway's smaller edges under a hostile caller: numbers that are digits only to
Unicode, a switch body with no bounds, a rebound page reading what is served without a
key, and a key cut short."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from modeld.core.errors import ConfigError
from modeld.core.gateway_config import GatewayConfig
from modeld.core.gateway_keys import Role, read_keys
from modeld.gateway.auth import Identity, Keys
from modeld.testing.fakes import Behaviour
from tests.gateway.conftest import KEY, GatewayFactory
from tests.gateway.test_openai import TWO
from tests.gateway.test_team import bearer
from tests.support import eventually, make_config
from tests.support.processes import BIN


async def test_digits_that_are_not_ascii_are_400_not_a_crash(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`?limit=²` on the history and `?lines=²` on a backend's logs are 400 bad_request
    (str.isdigit says yes to them, int() does not); in range they are served."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    for path in ("/v1/history?limit=²", "/v1/models/a/logs?lines=²", "/v1/history?limit=0"):
        async with http.get(front.url + path, headers=bearer(KEY)) as answer:
            assert answer.status == 400, path
            assert (await answer.json())["error"]["code"] == "bad_request"
    async with http.get(front.url + "/v1/history?limit=5", headers=bearer(KEY)) as answer:
        assert answer.status == 200


async def test_a_switch_body_is_read_as_inference_bodies_are(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The switch's JSON body is bounded like an inference body: past max_body_bytes
    413, a gzip body inflated within it and served, one that does not arrive within
    body_timeout_s 408; none of them switches anything it should not."""
    front = await fronted(
        make_config(TWO, [80]), api_keys=[KEY], max_body_bytes=64 * 1024, body_timeout_s=1.0
    )
    url = front.url + "/v1/models/switch"
    headers = {**bearer(KEY), "Content-Type": "application/json"}
    huge = json.dumps({"target_model": "a", "pad": "x" * 100_000}).encode()
    async with http.post(url, data=huge, headers=headers) as answer:
        assert answer.status == 413
    squeezed = gzip.compress(json.dumps({"target_model": "a"}).encode())
    async with http.post(url, data=squeezed, headers={**headers, "Content-Encoding": "gzip"}) as ok:
        assert ok.status == 200 and (await ok.json())["model"] == "a"
    assert front.runtime.starts("a") == 1

    host, port = front.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /v1/models/switch HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        '{"target_model": "b"'.encode()
    )
    async with asyncio.timeout(10):  # the body's deadline is 1 s
        status_line = await reader.readline()
    writer.close()
    assert b" 408 " in status_line
    assert front.runtime.starts("b") == 0


async def test_what_is_served_without_a_key_checks_the_host_on_a_keyed_gateway(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A keyed gateway opening /metrics and /health without a key: a request for them
    naming a foreign host (a rebound page's) is 403 forbidden_host; the gateway's own
    address is served, and a request with a key is served under any host, as before."""
    front = await fronted(
        make_config(TWO, [80]), api_keys=[KEY], metrics_without_key=True, health_without_key=True
    )
    foreign = {"Host": "rebound.example:8080"}
    for path in ("/metrics", "/health", "/"):
        async with http.get(front.url + path, headers=foreign) as answer:
            assert answer.status == 403, path
            assert (await answer.json())["error"]["code"] == "forbidden_host"
        async with http.get(front.url + path) as answer:
            assert answer.status == 200, path
    async with http.get(front.url + "/v1/models", headers={**foreign, **bearer(KEY)}) as keyed:
        assert keyed.status == 200


def test_a_key_cut_short_is_refused_and_the_gateway_prints_a_good_one(tmp_path: Path) -> None:
    """A key file line cut short (`alice sk-alice-b`) fails the file, naming the line (at
    start a config error, on SIGHUP the keys in force stay: read_keys raises either
    way); `modeld-gateway --new-key` prints a key that such a file takes."""
    keys = tmp_path / "keys"
    keys.write_text("alice sk-alice-b\n")
    with pytest.raises(ConfigError, match=r"line 1 of .* is shorter than 24 characters"):
        read_keys(GatewayConfig(inference_keys_file=keys))
    printed = subprocess.run(
        [BIN / "modeld-gateway", "--new-key"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert printed.startswith("sk-") and len(printed) >= 40
    keys.write_text(f"alice {printed}\n")
    (alice,) = read_keys(GatewayConfig(inference_keys_file=keys))
    assert Keys([alice]).identify(f"Bearer {printed}") == Identity(Role.INFERENCE, "alice")


async def _latest(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with http.get(url + "/v1/requests", headers=bearer(KEY)) as answer:
        entries: list[dict[str, object]] = (await answer.json())["requests"]
    return entries[-1]


async def test_a_stream_that_failed_is_recorded_as_failed_not_200(
    fronted: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Two streams whose headers said 200: one whose model's load failed (an error event
    after the headers) and one whose backend died mid-answer. Each is recorded with its
    real outcome in /v1/requests (and the log and metrics): its error's status and code,
    never 200."""
    front = await fronted(make_config(TWO, [80]), api_keys=[KEY])
    front.runtime.behaviour["b"] = Behaviour(load_seconds=0.5, exit_code=1)
    body = {"model": "b", "prompt": "hi", "max_tokens": 2, "stream": True}
    url = front.url + "/v1/completions"
    async with http.post(url, json=body, headers=bearer(KEY)) as answer:
        assert answer.status == 200
        assert b'"code": "load_failed"' in await answer.read()
    latest = await _latest(http, front.url)
    assert (latest["status"], latest["error"], latest["streamed"]) == (503, "load_failed", True)

    await front.engine.models.switch("a")
    front.runtime.server("a").cut_after_tokens = 3
    body = {"model": "a", "prompt": "hi", "max_tokens": 50, "stream": True}
    async with http.post(url, json=body, headers=bearer(KEY)) as answer:
        assert answer.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.read()  # it ends abruptly, not as if complete

    async def recorded() -> bool:
        return (await _latest(http, front.url))["model"] == "a"

    await eventually(recorded)
    latest = await _latest(http, front.url)
    assert (latest["status"], latest["error"]) == (502, "upstream_cut")
