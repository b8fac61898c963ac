"""`modeld-demo`: run the daemon on the embedded demo and show a switch.

Starts `modeld` with the demo config shipped in the package (etc/modeld/demo.toml links
to it; simulated GPU, fake vLLM backends as child processes) on a private socket, drives
it with `modelctl` (a model switch, and a switch between two LoRA adapters of one base),
sends three requests through `modeld-gateway` (each naming a model that is then loaded
for it, one an adapter), then stops both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

from rich.console import Console

from modeld.testing.ports import free_port

# Shipped inside the package (etc/modeld/demo.toml links to it), so an installed wheel
# runs the demo from anywhere.
DEMO_CONFIG = Path(__file__).resolve().parent / "demo.toml"
STEPS: list[list[str]] = [
    ["models"],
    ["switch", "demo-chat"],
    ["switch", "demo-coder"],
    ["status"],
    ["switch", "demo-large"],
    ["switch", "demo-large"],
    # LoRA adapters of demo-large: loaded into it in a fraction of a second, no restart.
    ["switch", "demo-large-sql"],
    ["switch", "demo-large-poet"],
    ["status"],
    ["switch", "demo-chat"],
    ["status"],
]


def _summary(line: str) -> str | None:
    """A switch decision or state transition from the daemon's JSON log, in one line."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if event.get("event") == "switch.plan":
        stop = ", ".join(event["stop"]) or "nothing"
        park = f", park {', '.join(event['park'])}" if event.get("park") else ""
        return (
            f"plan for {event['model']}: needs {event['required_gb']} GB, "
            f"{event['available_before_gb']} GB free, stop {stop}{park}"
        )
    if event.get("event") == "model.transition":
        return f"{event['model']}: {event['from_state']} -> {event['to_state']} ({event['reason']})"
    return None


def _ctl(socket: Path, args: list[str], console: Console) -> int:
    console.rule(f"[bold]$ modelctl {' '.join(args)}")
    command = [sys.executable, "-m", "modeld.cli.ctl", "--socket", str(socket), *args]
    return subprocess.run(command, check=False).returncode


def _wait_ready(daemon: subprocess.Popen[bytes], socket: Path, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    ping = [sys.executable, "-m", "modeld.cli.ctl", "--socket", str(socket), "ping"]
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return False
        if (
            socket.exists()
            and subprocess.run(ping, capture_output=True, check=False).returncode == 0
        ):
            return True
        time.sleep(0.1)
    return False


def curl_command(url: str, key: str, model: str) -> list[str]:
    """The curl command line of one streamed chat completion through the gateway."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "stream": True,
    }
    return [
        "curl",
        "-sN",
        f"{url}/v1/chat/completions",
        "-H",
        f"Authorization: Bearer {key}",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(body, separators=(",", ":")),
    ]


def _gateway_request(url: str, key: str, model: str, console: Console) -> bool:
    """One chat completion through modeld-gateway, sent as printed: curl runs the line
    shown (Python sends the same request where curl is not installed)."""
    command = curl_command(url, key, model)
    console.rule(f"[bold]a streamed chat completion for {model}, through the gateway")
    console.print(f"$ {shlex.join(command)}", markup=False, highlight=False, soft_wrap=True)
    try:
        if shutil.which("curl"):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise OSError(f"curl exited with {done.returncode}: {done.stderr.strip()}")
            lines = done.stdout.splitlines()
        else:
            console.print("(curl is not installed: the same request, sent by Python)")
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
            request = urllib.request.Request(command[2], command[-1].encode(), headers)
            with urllib.request.urlopen(request, timeout=120) as answer:
                lines = [raw.decode() for raw in answer]
        pieces = [
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in (raw.strip() for raw in lines)
            if line.startswith("data: {")
        ]
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        console.print(f"[red]the gateway did not answer: {exc}")
        return False
    console.print(f"{model} answered: {''.join(pieces)!r}", markup=False, highlight=False)
    return True


def _start_gateway(
    config: Path, socket: Path, log: IO[bytes]
) -> tuple[subprocess.Popen[bytes], str, str]:
    """modeld-gateway on the demo's config, its URL and the config's first key."""
    text = config.read_text()
    listen = re.search(r'^listen = "(.*)"$', text, re.MULTILINE)
    key = re.search(r'^api_keys = \["([^"]+)"', text, re.MULTILINE)
    assert listen and key, "the demo config has a [gateway] table with a key"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "modeld.gateway", "--config", str(config), "--socket", str(socket)],
        stderr=log,
    )
    return gateway, f"http://{listen.group(1)}", key.group(1)


def _wait_http(url: str, key: str, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    request = urllib.request.Request(f"{url}/health", headers={"Authorization": f"Bearer {key}"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def _through_the_gateway(config: Path, socket: Path, workdir: Path, console: Console) -> int:
    """Requests through modeld-gateway: naming demo-large loads it (parking what must go),
    `sql` (an adapter's alias) is answered by that adapter, then demo-chat wakes for the
    next; how many steps failed."""
    console.rule("[bold]$ modeld-gateway: the model a request names is loaded for it")
    with (workdir / "gateway.log").open("wb") as log:
        gateway, url, key = _start_gateway(config, socket, log)
        try:
            if not _wait_http(url, key, 30):
                console.print(f"[red]modeld-gateway did not come up; see {workdir}/gateway.log")
                return 1
            failed = 0
            for model in ("demo-large", "sql", "demo-chat"):
                failed += not _gateway_request(url, key, model, console)
            failed += _ctl(socket, ["ps"], console) != 0
            return failed
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)


def write_adapters(directory: Path) -> Path:
    """The demo adapters' files, as PEFT lays them out (adapter_config.json: all the fake
    vLLM reads), in `directory`."""
    for name in ("sql", "poet"):
        (directory / name).mkdir(parents=True, exist_ok=True)
        config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
        (directory / name / "adapter_config.json").write_text(json.dumps(config))
    return directory


def private_copy(config: Path, directory: Path, fresh_ports: bool = False) -> Path:
    """The demo config with its state and backends' sockets kept in `directory` (a run of
    its own); with
    `fresh_ports`, its backends on free ports too (so runs side by side do not clash)."""
    text = re.sub(
        r"^state_dir = .*$",
        f'state_dir = "{directory / "state"}"',
        config.read_text(),
        flags=re.MULTILINE,
    ).replace("/tmp/modeld-demo/backends", str(directory / "backends"))
    text = text.replace("/tmp/modeld-demo/adapters", str(write_adapters(directory / "adapters")))
    if fresh_ports:
        for port in set(re.findall(r'"(?:http://)?127\.0\.0\.1:(\d+)"', text)):
            new = str(free_port())
            text = text.replace(f'"{port}"', f'"{new}"').replace(f':{port}"', f':{new}"')
    copy = directory / config.name
    copy.write_text(text)
    return copy


def run(argv: list[str] | None = None) -> int:
    """Run the demo; 0 if every step worked."""
    parser = argparse.ArgumentParser(prog="modeld-demo", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    args = parser.parse_args(argv)
    console = Console()
    if not args.config.exists():
        console.print(f"[red]modeld-demo: {args.config} not found")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="modeld-demo-"))
    if args.config == DEMO_CONFIG:
        # Each run starts afresh: nothing learned by an earlier run changes what it shows.
        args.config = private_copy(DEMO_CONFIG, workdir, fresh_ports=True)
    socket = workdir / "modeld.sock"
    log_path = workdir / "modeld.log"
    console.print(f"starting modeld on {socket} (daemon log: {log_path})")
    console.print(
        f"to follow along from another shell while it runs: export MODELD_SOCKET={socket}; "
        "modelctl watch",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "modeld", "--config", str(args.config), "--socket", str(socket)],
            stderr=log,
            env={**os.environ, "MODELD_LOG_LEVEL": os.environ.get("MODELD_LOG_LEVEL", "info")},
        )
        failed = 0
        try:
            if not _wait_ready(daemon, socket, 30):
                console.print("[red]modeld did not come up; its log:")
                console.print(log_path.read_text())
                return 1
            for step in STEPS:
                if _ctl(socket, step, console) != 0:
                    failed += 1
            failed += _through_the_gateway(args.config, socket, workdir, console)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    console.rule("[bold]what the daemon logged: decisions and transitions")
    for line in log_path.read_text().splitlines():
        summary = _summary(line)
        if summary:
            console.print(summary, markup=False, highlight=False)
    if failed:
        console.print(f"[red]{failed} demo step(s) failed")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    console.print("[green]demo done: modeld switched models and stopped cleanly")
    return 0


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
