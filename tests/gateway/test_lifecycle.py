"""The gateway's lifecycle as systemd drives it (the daemon shares it: modeld/service):
SIGTERM lets answers in flight finish, a second one ends the process at once."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from modeld.testing.ports import wait_until
from tests.support.processes import SEED_KEY, running_demo

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def test_a_second_sigterm_ends_the_gateway_under_a_long_answer(tmp_path: Path) -> None:
    """A streamed answer is under way (a minute of tokens): SIGTERM stops the gateway
    gracefully, so it waits for the answer; a second SIGTERM ends it at once, saying
    the shutdown was forced."""
    with running_demo(tmp_path) as (url, gateway):
        body = {"model": "demo-chat", "prompt": "hi", "max_tokens": 3000, "stream": True}
        auth = f"Authorization: Bearer {SEED_KEY}"
        headers = ["-H", auth, "-H", "Content-Type: application/json"]
        answer = subprocess.Popen(
            ["curl", "-sN", *headers, "-d", json.dumps(body), f"{url}/v1/completions"],
            stdout=subprocess.PIPE,
        )
        try:
            assert answer.stdout is not None
            while not answer.stdout.readline().startswith(b"data: "):
                pass  # loading comments, then the first token: the answer is under way
            log = tmp_path / "gateway.log"
            gateway.send_signal(signal.SIGTERM)
            wait_until(lambda: "gateway.stopping" in log.read_text(), "the graceful stop")
            assert gateway.poll() is None  # waiting for the answer in flight
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(timeout=15) == 0
            assert "shutdown.forced" in log.read_text()
        finally:
            answer.kill()
            answer.wait(timeout=10)
