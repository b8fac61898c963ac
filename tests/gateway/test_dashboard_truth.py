"""The page never misleads, in a real browser (Debian's chromium): when modeld is gone it
says so and turns its actions off, it fills in by itself when modeld is back, its words
match its table, and refusals and failed streams say what really happened."""

from __future__ import annotations

import re

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.gateway.conftest import KEY, GatewayFactory, RestartableFactory
from tests.gateway.test_dashboard import MODELS, open_page, state
from tests.gateway.test_team import bearer
from tests.support import eventually, make_config


async def _event_streams(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url + "/metrics") as answer:
        found = re.search(r"^modeld_gateway_event_streams (\S+)$", await answer.text(), re.M)
    assert found
    return float(found.group(1))


async def test_the_page_says_when_modeld_is_gone_and_fills_in_when_it_is_back(
    restartable: RestartableFactory, browser: Browser, http: aiohttp.ClientSession
) -> None:
    """Opened while modeld is down, the page says so (since when, from where, why) and
    closes each attempt's event stream (left open, six of them spent the browser's
    connections and it never asked again); modeld starts: the tables fill in without a
    reload. Then modeld goes away with the page open: it says so, keeps the last state
    marked as such, turns Switch and Stop off, and turns them on again once it is back."""
    front = await restartable(make_config(MODELS, [80]))
    await front.engine.models.switch("chat")
    await front.stop_daemon()
    page = await browser.new_page(viewport={"width": 1200, "height": 760})
    attempts: list[str] = []
    page.on("request", lambda asked: attempts.append(asked.url) if "/events" in asked.url else None)
    await page.goto(front.url + "/")
    connection = page.locator("#connection")
    await expect(connection).to_contain_text("modeld unreachable since")
    await expect(page.locator("#notice.error")).to_contain_text(
        f"modeld is not answering the gateway at {front.url.removeprefix('http://')} since"
    )

    async def tried_three_times() -> bool:
        return len(attempts) >= 3

    await eventually(tried_three_times)
    assert await _event_streams(http, front.url) <= 1

    await front.start_daemon()
    await expect(state(page, "chat")).to_have_text("running")
    await expect(connection).to_have_text("live")
    switch = page.locator("button[data-action='switch'][data-model='coder']")
    await expect(switch).to_be_enabled()

    await front.stop_daemon()
    await expect(connection).to_contain_text("modeld unreachable since")
    await expect(switch).to_be_disabled()
    await expect(page.locator("button[data-action='stop'][data-model='chat']")).to_be_disabled()
    await expect(page.locator("main.stale")).to_have_count(1)
    await expect(state(page, "chat")).to_have_text("running")  # the last state known

    await front.start_daemon()
    await expect(connection).to_have_text("live")
    await expect(switch).to_be_enabled()
    await expect(page.locator("main.stale")).to_have_count(0)
    await expect(page.locator("#notice")).to_be_hidden()


async def test_a_switch_that_parks_says_parked_as_the_table_does(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """A click that parks chat (sleep mode) to make room says "(parked chat)", never
    "stopped", and the table shows chat sleeping."""
    models = {
        "chat": {"gpu_memory_gb": 50, "sleep_mode": True},
        "large": {"gpu_memory_gb": 45},
    }
    front = await fronted(make_config(models, [80], park_ram_gb=64), api_keys=[KEY])
    await front.engine.models.switch("chat")
    page = await open_page(browser, front)
    await expect(state(page, "chat")).to_have_text("running")
    await page.click("button[data-action='switch'][data-model='large']")
    await expect(page.locator("#notice")).to_have_text("large is running (parked chat)")
    await expect(state(page, "chat")).to_have_text("sleeping")


async def test_pinned_models_and_a_switch_that_would_be_refused_are_shown(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """A pinned model says so in the table; a stopped model whose switch cannot succeed
    beside it is annotated before the click (why, and what to do), and the click's
    refusal says which model stays and why."""
    models = {
        "chat": {"gpu_memory_gb": 50, "pinned": True},
        "large": {"gpu_memory_gb": 45},
    }
    front = await fronted(make_config(models, [80]), api_keys=[KEY])
    await front.engine.models.switch("chat")
    page = await open_page(browser, front)
    await expect(page.locator("tr[data-model='chat'] .tag.pinned")).to_have_text("pinned")
    plan = page.locator("[data-plan-for='large']")
    await expect(plan).to_contain_text("Switch would be refused now")
    await expect(plan).to_contain_text("Staying: chat (pinned)")
    await expect(page.locator("button[data-action='switch'][data-model='large']")).to_have_class(
        "doomed"
    )
    await page.click("button[data-action='switch'][data-model='large']")
    notice = page.locator("#notice.error")
    await expect(notice).to_contain_text("Staying: chat (pinned)")
    await expect(notice).to_contain_text("set pinned = false in its table and run modelctl reload")


async def test_a_stream_that_broke_off_is_listed_with_its_real_outcome(
    fronted: GatewayFactory, browser: Browser, http: aiohttp.ClientSession
) -> None:
    """A streamed answer whose backend broke off is listed among the recent requests as
    502 upstream_cut, not 200."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    await front.engine.models.switch("chat")
    front.runtime.server("chat").cut_after_tokens = 2
    page = await open_page(browser, front)
    await expect(state(page, "chat")).to_have_text("running")
    body = {"model": "chat", "prompt": "hi", "max_tokens": 20, "stream": True}
    async with http.post(front.url + "/v1/completions", json=body, headers=bearer(KEY)) as answer:
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.read()
    requests = page.locator("#requests li[data-model='chat']")
    await expect(requests.first).to_contain_text("/v1/completions → 502 upstream_cut (streamed)")
