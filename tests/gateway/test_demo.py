"""The daemon and the gateway as a user runs them: real processes on the demo config,
called with `curl` (the seed's lines) and the `openai` package."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from modeld.testing.ports import wait_until
from tests.support.processes import SEED_KEY, curl, running_demo


@pytest.fixture
def demo_gateway(tmp_path: Path) -> Iterator[str]:
    """The demo's daemon and gateway; the gateway's URL."""
    with running_demo(tmp_path) as (url, _):
        yield url


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_seeds_curl_lines_and_the_openai_package_on_the_demo(demo_gateway: str) -> None:
    """The seed's two curl lines answer with its fields; the openai package gets answers
    from demo-chat and demo-large (which cannot share the GPU with both others), the
    gateway switching by the request's model, streamed and not."""
    status = curl(f"{demo_gateway}/v1/models/status")
    assert set(status["models"]) == {
        "demo-chat",
        "demo-coder",
        "demo-large",
        "demo-large-sql",
        "demo-large-poet",
    }
    assert {"used_gb", "total_gb", "available_gb"} <= set(status["gpu"])
    switched = curl("-X", "POST", f"{demo_gateway}/v1/models/switch?target_model=demo-coder")
    assert switched["status"] == "success"

    api = openai.OpenAI(base_url=f"{demo_gateway}/v1", api_key=SEED_KEY, max_retries=0)
    chat = api.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.choices[0].message.content == "demo-chat ok ok"
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in api.chat.completions.create(
            model="demo-large",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
        )
        if chunk.choices
    ]
    assert "".join(pieces) == "demo-large ok ok ok ok"
    states = {m["id"]: m["status"] for m in curl(f"{demo_gateway}/v1/models")["data"]}
    assert states["demo-large"] == "running"
    assert states["demo-chat"] == "sleeping"  # parked to make room
    again = api.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "back"}], max_tokens=1
    )
    assert again.model == "demo-chat"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_a_backend_key_is_rotated_by_a_restart_and_a_reload(tmp_path: Path) -> None:
    """demo-large with an `api_key_file`: the daemon starts its backend with the key and
    the gateway sends it. The file changes and the model restarts: the gateway's old
    key is refused (502 upstream_unauthorized) until SIGHUP makes it read the file again."""
    key = tmp_path / "large.key"
    key.write_text("large-secret-1\n")
    header = '[models."demo-large"]\n'

    def with_key(text: str) -> str:
        return text.replace(header, f'{header}api_key_file = "{key}"\n')

    with running_demo(tmp_path, with_key) as (url, gateway):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key=SEED_KEY, max_retries=0)

        def ask() -> str | None:
            answer = api.completions.create(model="demo-large", prompt="hi", max_tokens=2)
            return answer.choices[0].text

        assert ask() == "demo-large ok"
        key.write_text("large-secret-2\n")
        assert curl("-X", "POST", f"{url}/v1/models/demo-large/restart")["status"] == "restarted"
        with pytest.raises(openai.InternalServerError) as refused:
            ask()
        assert refused.value.status_code == 502
        assert refused.value.code == "upstream_unauthorized"
        gateway.send_signal(signal.SIGHUP)

        def answered() -> bool:
            try:
                return ask() == "demo-large ok"
            except openai.InternalServerError:
                return False

        wait_until(answered, "the gateway sending the new key after SIGHUP")
