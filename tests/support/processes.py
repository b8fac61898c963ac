"""The daemon and the gateway as real processes, on a private copy of the demo config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modeld.demo.main import DEMO_CONFIG, private_copy
from modeld.testing.ports import wait_until

SEED_KEY = "sk-local-2ac9387d659f7131f38d83e5f7bee469"
BIN = Path(sys.executable).parent


@contextmanager
def running_demo(
    tmp_path: Path, edit: Callable[[str], str] = lambda text: text
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`modeld` and `modeld-gateway` on a private copy of the demo config (changed by
    `edit`); the gateway's URL and process."""
    config = private_copy(DEMO_CONFIG, tmp_path, fresh_ports=True)
    config.write_text(edit(config.read_text()))
    socket = tmp_path / "modeld.sock"
    listen = re.search(r'^listen = "(.*)"$', config.read_text(), re.M)
    assert listen is not None
    logs = [(tmp_path / name).open("w") for name in ("modeld.log", "gateway.log")]
    daemon = subprocess.Popen(
        [BIN / "modeld", "--config", config, "--socket", socket], stderr=logs[0]
    )
    gateway = subprocess.Popen(
        [BIN / "modeld-gateway", "--config", config, "--socket", socket], stderr=logs[1]
    )
    url = f"http://{listen.group(1)}"

    def answers() -> bool:
        assert daemon.poll() is None, (tmp_path / "modeld.log").read_text()
        assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
        probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
        auth = ["-H", f"Authorization: Bearer {SEED_KEY}"]
        done = subprocess.run(
            [*probe, *auth, f"{url}/health"], capture_output=True, text=True, timeout=30
        )
        return done.stdout == "200"

    try:
        wait_until(answers, "the gateway answering /health")
        yield url, gateway
    finally:
        for process in (gateway, daemon):
            process.terminate()
            process.wait(timeout=60)
        for log in logs:
            log.close()


def curl(*args: str) -> Any:
    """Run curl with the seed's key; its JSON answer."""
    done = subprocess.run(
        ["curl", "-s", "-f", "-H", f"Authorization: Bearer {SEED_KEY}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)
