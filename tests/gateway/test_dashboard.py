"""The dashboard in a real browser: Debian's chromium, driven by Playwright through its
executable (no browser download)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from modeld.core.errors import LoadFailed
from modeld.testing.fakes import Behaviour
from tests.engine.test_adapters import lora_config
from tests.gateway.conftest import KEY, Fronted, GatewayFactory
from tests.support import eventually, make_config

# Like the demo: two that fit together, and a large one that needs one of them gone.
MODELS = {
    "chat": {"gpu_memory_gb": 30, "description": "Chat model", "load_time_seconds": 2},
    "coder": {"gpu_memory_gb": 20, "description": "Coder model", "load_time_seconds": 1.5},
    "large": {"gpu_memory_gb": 45, "description": "Large model", "load_time_seconds": 1.5},
    # Fits the GPU alone, never beside what a process outside modeld holds (EXTERNAL).
    "huge": {"gpu_memory_gb": 78, "description": "Too large beside what others hold"},
}
# Held on the GPU by a process outside modeld.
EXTERNAL_GB = 5
# Where the README's screenshot is written (set it to refresh docs/dashboard.png).
SCREENSHOT = os.environ.get("MODELD_SCREENSHOT")


async def open_page(browser: Browser, front: Fronted, key: str = KEY) -> Page:
    """The dashboard, with the key typed in once when it asks."""
    page = await browser.new_page(viewport={"width": 1200, "height": 760})
    await page.goto(front.url + "/")
    await expect(page.locator("#key-dialog")).to_be_visible()
    await page.fill("#key-input", key)
    await page.click("#key-save")
    return page


def state(page: Page, model: str) -> Locator:
    """The state word shown for `model`."""
    return page.locator(f"tr[data-model='{model}'] .state")


async def test_the_page_lists_every_model_with_its_state_and_the_gpu(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """Every model with its state in words, memory and load estimate; the GPU's bar
    (as wide as the text says) with used, free and total; the key is asked for once and
    kept."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    await front.engine.models.switch("chat")
    page = await open_page(browser, front)
    for model, word in (("chat", "running"), ("coder", "stopped"), ("large", "stopped")):
        await expect(state(page, model)).to_have_text(word)
    await expect(page.locator("tr[data-model='chat'] td[data-label='Memory']")).to_contain_text(
        "30.0 GB"
    )
    await expect(page.locator(".gpu .figures")).to_have_text(
        "used 30.0 GB · free 50.0 GB · total 80.0 GB"
    )
    # The bar agrees with the text: chat's segment is 30/80 of it.
    # Measured in one step: the page redraws the bar on every status read.
    share = 0.0
    for _ in range(20):  # a bar caught mid-redraw has no width yet
        share = await page.locator(".gpu .bar").evaluate(
            "bar => bar.querySelector('.seg').getBoundingClientRect().width"
            " / bar.getBoundingClientRect().width"
        )
        if share == share and share > 0:  # not NaN
            break
        await page.wait_for_timeout(50)
    assert abs(share - 30 / 80) < 0.02, share
    await page.reload()  # the key was kept: no dialog this time
    await expect(state(page, "chat")).to_have_text("running")
    await expect(page.locator("#key-dialog")).to_be_hidden()
    # Its activity, from its backend's /metrics between two polls.
    await front.engine.poll_once()
    async with aiohttp.ClientSession() as http:
        body = {"model": "chat", "prompt": "hi", "max_tokens": 4}
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.post(front.url + "/v1/completions", json=body, headers=headers) as done:
            assert done.status == 200
    await front.engine.poll_once()
    await page.reload()
    await expect(page.locator("tr[data-model='chat'] td[data-label='Requests']")).to_contain_text(
        re.compile(r"0 in flight · \d+\.\d req/s · \d+ tok/s")
    )
    # The gateway's own latest requests (an admin key sees them).
    await expect(page.locator("#requests li").first).to_contain_text(
        re.compile(r"chat /v1/completions → 200 in \d+\.\d\d s \(key key-")
    )


async def test_a_wrong_key_is_shown_as_refused(fronted: GatewayFactory, browser: Browser) -> None:
    """A wrong key is said to be refused, and a right one then works."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    page = await open_page(browser, front, key="sk-not-the-key-0000")
    await expect(page.locator("#key-message")).to_have_text("The key was refused: enter another.")
    await page.fill("#key-input", KEY)
    await page.click("#key-save")
    await expect(state(page, "chat")).to_have_text("stopped")


async def test_a_click_switches_with_progress_and_the_evicted_model_stops(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """Switch on a stopped model: its progress shows while it loads, then it runs and
    the model it needed gone is stopped."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    front.runtime.behaviour["large"] = Behaviour(load_seconds=1.5)
    await front.engine.models.switch("chat")
    await front.engine.models.switch("coder")
    page = await open_page(browser, front)
    await expect(state(page, "chat")).to_have_text("running")
    await page.click("button[data-action='switch'][data-model='large']")
    await expect(page.locator("tr[data-model='large'] progress")).to_be_visible()
    await expect(state(page, "large")).to_have_text("loading")
    await expect(state(page, "large")).to_have_text("running", timeout=15_000)
    await expect(state(page, "chat")).to_have_text("stopped")
    await expect(state(page, "coder")).to_have_text("running")
    await expect(page.locator("#notice")).to_have_text("large is running (stopped chat)")


async def test_a_refused_switch_shows_the_daemons_reason_and_numbers(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """A switch that cannot fit is shown with the reason and the seed's figures; nothing
    changes."""
    config = make_config(MODELS, [80], gpu={"external_used_gb": [EXTERNAL_GB]})
    front = await fronted(config, api_keys=[KEY])
    await front.engine.models.switch("chat")
    page = await open_page(browser, front)
    await page.click("button[data-action='switch'][data-model='huge']")
    notice = page.locator("#notice.error")
    await expect(notice).to_contain_text("Cannot free enough GPU memory to load huge")
    await expect(notice).to_contain_text("required 78.0 GB")
    await expect(state(page, "chat")).to_have_text("running")


async def test_a_switch_made_elsewhere_appears_without_a_reload(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """A switch made with `modelctl` shows on the open page, live, and its banner ends
    saying how it went."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    page = await open_page(browser, front)
    await expect(page.locator("#connection")).to_have_text("live")
    for action, word in (("switch", "running"), ("stop", "stopped")):
        modelctl = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modeld.cli.ctl", "--socket", str(front.socket), action, "large"
        )
        assert await modelctl.wait() == 0
        await expect(state(page, "large")).to_have_text(word)
        if action == "switch":  # the banner ends with the outcome
            await expect(page.locator("#notice")).to_have_text("large is running")


async def test_the_page_is_usable_from_the_keyboard_on_a_phone(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """On a phone-sized screen each model is a card with labelled lines, and a switch
    can be made with Tab and Enter alone."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await page.goto(front.url + "/")
    await page.fill("#key-input", KEY)
    await page.keyboard.press("Enter")
    await expect(state(page, "coder")).to_have_text("stopped")
    button = page.locator("button[data-action='switch'][data-model='coder']")
    for _ in range(40):
        if await button.evaluate("b => b === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(state(page, "coder")).to_have_text("running")
    header = await page.locator("thead").bounding_box()
    assert header is not None and header["x"] < 0  # table headers give way to labels


def test_the_page_needs_no_network_beyond_the_gateway() -> None:
    """No CDN, no web font, no build step: the files reference only /static/."""
    static = Path(__file__).resolve().parents[2] / "modeld" / "gateway" / "static"
    text = "".join(path.read_text() for path in static.iterdir())
    assert "http://" not in text and "https://" not in text
    assert {path.name for path in static.iterdir()} == {"index.html", "app.js", "style.css"}


async def test_the_key_stays_with_the_tab_unless_remembered_and_can_be_forgotten(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """The key typed in is kept for the tab (a new tab asks again; nothing in
    localStorage); "Remember" keeps it for the next tab; "Forget key" drops it and the
    page asks again. The page runs under its Content-Security-Policy with no violation."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    context = await browser.new_context()
    violations: list[str] = []

    async def tab() -> Page:
        page = await context.new_page()
        page.on(
            "console",
            lambda message: (
                violations.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        await page.goto(front.url + "/")
        return page

    first = await tab()
    await expect(first.locator("#key-dialog")).to_be_visible()
    await first.fill("#key-input", KEY)
    await first.click("#key-save")
    await expect(state(first, "chat")).to_have_text("stopped")
    assert await first.evaluate("localStorage.getItem('modeld.apiKey')") is None
    assert await first.evaluate("sessionStorage.getItem('modeld.apiKey')") == KEY

    second = await tab()  # another tab: the key was not kept beyond the first
    await expect(second.locator("#key-dialog")).to_be_visible()
    await second.fill("#key-input", KEY)
    await second.check("#key-remember")
    await second.click("#key-save")
    await expect(state(second, "chat")).to_have_text("stopped")

    third = await tab()  # remembered: no question
    await expect(state(third, "chat")).to_have_text("stopped")
    await expect(third.locator("#key-dialog")).to_be_hidden()
    await third.click("#key-forget")
    assert await third.evaluate("localStorage.getItem('modeld.apiKey')") is None
    await third.reload()
    await expect(third.locator("#key-dialog")).to_be_visible()
    await expect(third.locator("#key-forget")).to_be_hidden()
    assert violations == []
    await context.close()


async def test_the_plan_shows_before_a_click_and_the_click_does_what_it_said(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """Before anything is clicked, each model that does not run says what switching to
    it would do (the daemon's dry run); clicking does exactly that, and the decisions
    appear in the history with their reasons."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    await front.engine.models.switch("chat")
    await front.engine.models.switch("coder")
    page = await open_page(browser, front)
    plan = page.locator("[data-plan-for='large']")
    await expect(plan).to_have_text("Switch: stop chat; then start large (~1.5 s)")
    await expect(page.locator("[data-plan-for='chat']")).to_have_count(0)  # it runs
    front.runtime.behaviour["large"] = Behaviour(load_seconds=1.5)
    await page.click("button[data-action='switch'][data-model='large']")
    # While it runs, a banner says what the switch is doing, from its plan.
    await expect(page.locator("#notice")).to_have_text(
        re.compile(r"^Switching to large: stopping chat \(needs 45\.0 GB, 30\.0 GB free\)$")
    )
    await expect(state(page, "large")).to_have_text("running")
    await expect(state(page, "chat")).to_have_text("stopped")
    history = page.locator("#history li")
    await expect(
        history.filter(has_text="chat stopping → stopped (evicted for large)")
    ).to_have_count(1)
    await expect(history.filter(has_text="large switch planned: stop chat")).to_have_count(1)
    await expect(page.locator("[data-plan-for='chat']")).to_have_text(
        re.compile(r"^Switch: stop large; then start chat \(~\d+(\.\d)? s\)$")
    )
    if SCREENSHOT:  # the README's picture: plans, activity, requests and the history
        await front.engine.poll_once()
        async with aiohttp.ClientSession() as http:
            body = {"model": "large", "prompt": "hi", "max_tokens": 8}
            headers = {"Authorization": f"Bearer {KEY}"}
            for _ in range(3):
                async with http.post(front.url + "/v1/completions", json=body, headers=headers):
                    pass
        await front.engine.poll_once()
        await expect(
            page.locator("tr[data-model='large'] td[data-label='Requests']")
        ).to_contain_text("req/s", timeout=20_000)
        await page.screenshot(path=SCREENSHOT, full_page=True)


async def test_memory_text_follows_a_stop_within_a_poll(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """After Stop, the GPU text shows the freed memory as soon as a reading shows it
    (gpu.memory), equal to what `gpu` says, with no reload of the page."""
    config = make_config(MODELS, [80], gpu={"release_delay_s": 0.3})
    front = await fronted(config, api_keys=[KEY])
    await front.engine.models.switch("chat")
    page = await open_page(browser, front)
    await expect(page.locator(".gpu .figures")).to_have_text(
        "used 30.0 GB · free 50.0 GB · total 80.0 GB"
    )
    await page.click("button[data-action='stop'][data-model='chat']")
    await expect(state(page, "chat")).to_have_text("stopped")

    # The driver lets go 0.3 s later (the simulated GPU's clock): the monitor's next
    # reading after that announces it.
    async def released() -> bool:
        await front.engine.poll_once()
        return bool(front.engine.view.gpu().devices[0].used_gb == 0)

    await eventually(released, timeout=10)
    # Sooner than the page's own 5 s re-read: the gpu.memory event brings it.
    await expect(page.locator(".gpu .figures")).to_have_text(
        "used 0.0 GB · free 80.0 GB · total 80.0 GB", timeout=3_000
    )


async def test_the_log_panel_follows_a_backend_and_shows_a_failure(
    fronted: GatewayFactory, browser: Browser
) -> None:
    """Logs opens a panel with the backend's lines, following it until it ends; a failed
    model's panel starts with its reason."""
    front = await fronted(make_config(MODELS, [80]), api_keys=[KEY])
    await front.engine.models.switch("chat")
    page = await open_page(browser, front)
    await page.click("button[data-action='logs'][data-model='chat']")
    await expect(page.locator("#logs-title")).to_have_text("Logs of chat")
    await expect(page.locator("#logs-lines")).to_contain_text("chat: CUDA error: out of memory")
    await front.engine.models.stop("chat")
    await expect(page.locator("#logs-state")).to_have_text("the backend ended")
    await page.click("#logs-close")
    await expect(page.locator("#logs-dialog")).to_be_hidden()

    front.runtime.behaviour["coder"] = Behaviour(load_seconds=0.5, exit_code=3)
    with pytest.raises(LoadFailed):
        await front.engine.models.switch("coder")
    await expect(state(page, "coder")).to_have_text("failed")
    await expect(page.locator("#notice.error")).to_have_text(
        "coder failed: coder: backend exited with code 3 while loading"
    )
    await page.click("button[data-action='logs'][data-model='coder']")
    await expect(page.locator("#logs-state")).to_contain_text("failed: coder")


async def test_adapters_are_shown_under_their_base(
    fronted: GatewayFactory, browser: Browser, tmp_path: Path
) -> None:
    """Each adapter's row follows its base's, marked as its adapter, its memory the
    base's; a click switches to an adapter and the base is not restarted."""
    front = await fronted(lora_config(tmp_path), api_keys=[KEY])
    await front.engine.models.switch("sql")
    page = await open_page(browser, front)
    await expect(state(page, "sql")).to_have_text("running")
    rows = await page.locator("#models tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.model)"
    )
    assert rows.index("base") + 1 == rows.index("sql") < rows.index("chat") < rows.index("other")
    sql = page.locator("tr[data-model='sql']")
    await expect(sql.locator(".tag.adapter")).to_have_text("adapter of base")
    await expect(sql.locator("td[data-label='Memory']")).to_have_text("in base's")
    await page.click("tr[data-model='chat'] button[data-action='switch']")
    await expect(state(page, "chat")).to_have_text("running")
    assert front.runtime.starts("base") == 1
