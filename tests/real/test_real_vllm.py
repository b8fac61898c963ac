"""Real vLLM (for CPU) behind the real `modeld` and `modeld-gateway`, driven with the
`openai` package as a client would: loads on request, a stream that hears from modeld
while the model loads, aliases, a switch between two servers (one on the Unix socket
modeld chose, one on `{host}:{port}`), the model-server metrics from real vLLM's own, two
LoRA adapters of the second answering as themselves, the kept compile cache, and a load
that stalls.

The tests share one daemon and run in file order, each from the state the one before
left (a real cold start costs a minute on two cores: the tier takes four).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modeld.client import Client
from modeld.core.activity import FINISHED, IN_FLIGHT, KV_CACHE
from modeld.testing.ports import free_port, wait_until
from tests.support.realvllm import CPU_ENV, vllm_command, write_tiny_lora

# A real cold start takes minutes on a busy two-core machine, not the suite's 180 s.
pytestmark = pytest.mark.timeout(900)
BIN = Path(sys.executable).parent
KEY = "sk-real-vllm-tier-0123456789"
# Long enough for a cold start with torch.compile on a busy two-core machine.
LOAD_S = 600
# The stalled model's load_stall_timeout_s: longer than vLLM's first silence (its
# imports, up to ~25 s on a busy two-core machine), so its real lines must count.
STALL_S = 40
TOKENS = 4


@dataclass
class RealHost:
    """The daemon and gateway in front of real vLLM backends."""

    port: int
    socket: Path
    cache: Path
    workdir: Path
    port_b: int

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        """The daemon's status, asked over its socket."""
        return self.call("status")  # type: ignore[no-any-return]

    def state(self, model: str) -> str:
        """A model's state now."""
        return str(self.status()["models"][model]["status"])

    def call(self, method: str, **params: Any) -> Any:
        """One JSON-RPC call to the daemon."""

        async def ask() -> Any:
            async with Client(self.socket) as client:
                return await client.call(method, **params)

        return asyncio.run(ask())

    def openai(self) -> openai.OpenAI:
        """The `openai` package's client, pointed at the gateway."""
        # No retries: a refusal must reach the test, not start the load again.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, timeout=LOAD_S, max_retries=0)

    def kernels(self, model: str) -> set[Path]:
        """The compiled kernels in a model's kept vLLM cache."""
        return set((self.cache / "vllm" / model).rglob("*.so"))


def answers_health(url: str, key: str | None = None) -> bool:
    """Whether GET `url` answers 200 now."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=5
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def config_text(python: Path, model_dir: Path, tmp: Path, gateway_port: int, port_b: int) -> str:
    """The config a new user would write: no endpoint for the socket model, a chosen
    `{host}:{port}` for the other, which also carries two LoRA adapters; each 6 GB on a
    10 GB (simulated) GPU, so one at a time."""
    adapters: dict[str, dict[str, Any]] = {
        f"tiny-b-{name}": {
            "base": "tiny-b",
            "adapter": str(write_tiny_lora(python, model_dir, tmp / "adapters" / name, seed)),
        }
        for name, seed in (("sql", 1), ("chat", 2))
    }
    models: dict[str, dict[str, Any]] = {
        "tiny-a": {
            "command": vllm_command(python, model_dir, "tiny-a", "--uds", "{socket}"),
            "aliases": ["gpt-4o-mini", "tiny:latest"],
        },
        "tiny-b": {
            "endpoint": f"http://127.0.0.1:{port_b}",
            # No compile for this one: the cache is tiny-a's story, and it saves a minute.
            "command": [
                *vllm_command(python, model_dir, "tiny-b", "--host", "{host}", "--port", "{port}"),
                "--enforce-eager",
                *("--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"),
            ],
        },
        "tiny-stall": {
            "command": vllm_command(python, model_dir, "tiny-stall", "--uds", "{socket}"),
            "load_stall_timeout_s": STALL_S,
            # Fits beside tiny-a: its failure restores nothing.
            "gpu_memory_gb": 4,
        },
    }
    lines = [
        "[daemon]",
        f"socket = {json.dumps(str(tmp / 'modeld.sock'))}",
        f"state_dir = {json.dumps(str(tmp / 'state'))}",
        f"cache_dir = {json.dumps(str(tmp / 'cache'))}",
        "poll_interval_s = 1",
        "",
        "[gpu]",
        'backend = "simulated"',
        "devices_gb = [10]",
        "release_delay_s = 0",
        "",
        "[gateway]",
        f'listen = "127.0.0.1:{gateway_port}"',
        f'api_keys = ["ci {KEY}"]',
    ]
    for name, settings in adapters.items():
        lines += ["", f'[models."{name}"]']
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    for name, settings in models.items():
        settings = {
            "runtime": "process",
            "gpu_memory_gb": 6,
            "load_timeout_s": LOAD_S,
            "stop_timeout_s": 5,
            # A first token on a busy two-core machine may take more than 5 s.
            "probe_timeout_s": 60,
            "env": CPU_ENV,
            **settings,
        }
        lines += ["", f'[models."{name}"]']
        for key, value in settings.items():
            if isinstance(value, dict):
                pairs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {pairs} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def host(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealHost]:
    """`modeld` and `modeld-gateway` as processes on the config above."""
    tmp = tmp_path_factory.mktemp("real-host")
    gateway_port, port_b = free_port(), free_port()
    config = tmp / "modeld.toml"
    config.write_text(config_text(vllm_python, tiny_model, tmp, gateway_port, port_b))
    checked = subprocess.run(
        [BIN / "modeld", "check-config", "--config", config], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    socket = tmp / "modeld.sock"
    logs = [(tmp / name).open("w") for name in ("modeld.log", "gateway.log")]
    daemon = subprocess.Popen([BIN / "modeld", "--config", config], stderr=logs[0])
    gateway = subprocess.Popen([BIN / "modeld-gateway", "--config", config], stderr=logs[1])
    url = f"http://127.0.0.1:{gateway_port}"

    def answers() -> bool:
        assert daemon.poll() is None, (tmp / "modeld.log").read_text()
        assert gateway.poll() is None, (tmp / "gateway.log").read_text()
        return answers_health(f"{url}/health", KEY)

    try:
        wait_until(answers, "the gateway answering /health", timeout=60)
        yield RealHost(gateway_port, socket, tmp / "cache", tmp, port_b)
    finally:
        for process in (gateway, daemon):
            process.terminate()
            process.wait(timeout=120)
        for log in logs:
            log.close()


def test_a_stream_for_a_cold_real_model_hears_from_modeld_while_vllm_loads(
    host: RealHost,
) -> None:
    """Streamed by an alias while nothing runs: the headers and a `: modeld loading`
    comment arrive while the model is still loading, then vLLM's own tokens and [DONE];
    the backend listens on the socket modeld chose."""
    assert host.state("tiny-a") == "stopped"
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "max_tokens": TOKENS,
    }
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    comments: list[str] = []
    events: list[dict[str, Any]] = []
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=LOAD_S)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(": modeld loading tiny-a") and not comments:
                # The first comment is sent before vLLM answers (as the load begins).
                assert host.state("tiny-a") in ("stopped", "loading")
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line.removeprefix("data: ")))
            if line == "data: [DONE]":
                break
    finally:
        connection.close()
    assert comments and comments[0].startswith(": modeld loading tiny-a")
    assert events, "vLLM streamed no tokens"
    assert {event["model"] for event in events} == {"tiny-a"}
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert host.state("tiny-a") == "running"
    socket = host.workdir / "backends" / "tiny-a.sock"
    assert socket.is_socket()
    # The same model by its other alias, not streamed, with the openai package.
    done = host.openai().completions.create(model="tiny:latest", prompt="hello", max_tokens=TOKENS)
    assert done.choices[0].text
    listed = {m.id: m for m in host.openai().models.list()}
    assert {"tiny-a", "gpt-4o-mini", "tiny:latest", "tiny-b"} <= set(listed)


def test_asking_for_the_other_real_model_switches_to_it_on_its_port(host: RealHost) -> None:
    """tiny-b (on `{host}:{port}`) does not fit beside tiny-a: asking for it stops
    tiny-a, starts it, and vLLM answers the openai package's chat request."""
    assert host.state("tiny-a") == "running"
    chat = host.openai().chat.completions.create(
        model="tiny-b", messages=[{"role": "user", "content": "hi"}], max_tokens=TOKENS
    )
    assert chat.model == "tiny-b"
    assert chat.choices[0].message.content
    status = host.status()["models"]
    assert status["tiny-b"]["status"] == "running"
    assert status["tiny-a"]["status"] == "stopped"
    # vLLM got the host and port from `{host}` and `{port}`, and listens there.
    assert answers_health(f"http://127.0.0.1:{host.port_b}/health")


def test_the_host_speaks_the_model_server_protocol_from_real_vllm(host: RealHost) -> None:
    """Real vLLM's /metrics has the names modeld reads (running, waiting, KV cache), and
    the gateway's /metrics reports the model-server protocol from them: tiny-b resident,
    tiny-a not, a KV cache share between 0 and 1."""
    with urllib.request.urlopen(f"http://127.0.0.1:{host.port_b}/metrics", timeout=10) as raw:
        names = {
            sample.name
            for family in text_string_to_metric_families(raw.read().decode())
            for sample in family.samples
        }
    assert names >= IN_FLIGHT and KV_CACHE & names and FINISHED & names
    asked = urllib.request.Request(
        f"{host.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(asked, timeout=10) as answer:
        found = {
            sample.name: sample
            for family in text_string_to_metric_families(answer.read().decode())
            for sample in family.samples
            if sample.name.startswith("vllm:")
        }
    info = found["vllm:lora_requests_info"].labels
    assert info["running_lora_adapters"].split(",") == ["tiny-b"]
    # 4 GB (tiny-stall) and 6 GB fit the 10 GB together: two models at once; and tiny-b
    # takes two adapters (--max-loras 2), none loaded yet: room for three more names.
    assert info["waiting_lora_adapters"] == "" and info["max_lora"] == "4"
    assert 0 <= found["vllm:kv_cache_usage_perc"].value <= 1
    assert found["vllm:num_requests_waiting"].value == 0


def test_adapters_of_a_real_base_answer_as_themselves(host: RealHost) -> None:
    """tiny-b runs with --enable-lora: its two adapters (written on the spot in PEFT's
    layout) are asked for through the gateway with the openai package; each is loaded
    into the running base without restarting it, and each answers unlike the base and
    unlike the other (greedy). The gateway then lists them as running adapters."""
    before = host.status()["models"]["tiny-b"]
    assert before["status"] == "running"

    def greedy(model: str) -> str:
        done = host.openai().completions.create(
            model=model, prompt="the model answers", max_tokens=8, temperature=0
        )
        assert done.model == model
        return done.choices[0].text

    answers = {model: greedy(model) for model in ("tiny-b", "tiny-b-sql", "tiny-b-chat")}
    assert len(set(answers.values())) == 3, answers
    status = host.status()["models"]
    assert status["tiny-b"]["backend_pid"] == before["backend_pid"]  # never restarted
    for name in ("tiny-b-sql", "tiny-b-chat"):
        assert status[name]["status"] == "running" and status[name]["base"] == "tiny-b"
        assert status[name]["last_load_seconds"] is not None
    asked = urllib.request.Request(
        f"{host.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(asked, timeout=10) as answer:
        info = next(
            sample.labels
            for family in text_string_to_metric_families(answer.read().decode())
            for sample in family.samples
            if sample.name == "vllm:lora_requests_info"
        )
    assert {"tiny-b-sql", "tiny-b-chat"} <= set(info["running_lora_adapters"].split(","))
    # Stopped, the adapter is unloaded from the base, which serves on.
    host.call("stop", model="tiny-b-sql")
    assert host.state("tiny-b-sql") == "stopped" and host.state("tiny-b") == "running"
    assert greedy("tiny-b-chat") == answers["tiny-b-chat"]


def test_the_second_cold_start_compiles_nothing_new(host: RealHost) -> None:
    """tiny-a's first start compiled its kernels into its kept cache (cache_dir/vllm/
    tiny-a); started again, it finds them there: no kernel is compiled twice."""
    before = host.kernels("tiny-a")
    assert before, "the first start left no compiled kernels in the kept cache"
    chat = host.openai().chat.completions.create(
        model="tiny-a", messages=[{"role": "user", "content": "again"}], max_tokens=TOKENS
    )
    assert chat.choices[0].message.content
    assert host.state("tiny-a") == "running"
    assert host.kernels("tiny-a") == before


def frozen_backend(cache_root: Path) -> list[int]:
    """SIGSTOP every process of a backend (found by its VLLM_CACHE_ROOT), not its
    reaper: a vLLM that hangs. Returns the PIDs."""
    marker = f"VLLM_CACHE_ROOT={cache_root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # The reaper runs its source with `python -c`: that source is in its command line.
        if marker in environ and b"PR_SET_CHILD_SUBREAPER" not in cmdline:
            found.append(int(entry.name))
    for pid in found:
        os.kill(pid, signal.SIGSTOP)
    return found


def test_a_real_vllm_that_stops_printing_fails_stalled(host: RealHost) -> None:
    """vLLM's real startup lines count as progress; frozen right after its banner (a
    hang), it prints nothing more and never answers: the load fails `stalled`
    load_stall_timeout_s after its last line (not after its start, not at
    load_timeout_s), the waiting request gets that failure, and modeld ends the frozen
    processes."""
    frozen: list[int] = []

    def ask() -> openai.APIStatusError | None:
        try:
            host.openai().chat.completions.create(
                model="tiny-stall", messages=[{"role": "user", "content": "hi"}], max_tokens=TOKENS
            )
        except openai.APIStatusError as error:
            return error
        return None

    with ThreadPoolExecutor(1) as pool:
        asked_at = time.monotonic()
        waiting = pool.submit(ask)

        def printed() -> bool:
            lines = host.call("logs", model="tiny-stall", lines=50)["lines"]
            return any("non-default args" in line for line in lines)

        wait_until(printed, "vLLM's banner", timeout=STALL_S, interval=0.1)
        assert host.state("tiny-stall") == "loading"
        frozen = frozen_backend(host.cache / "vllm" / "tiny-stall")
        frozen_at = time.monotonic()
        try:
            assert frozen, "no process of tiny-stall found"
            error = waiting.result(timeout=STALL_S + 60)
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        failed_at = time.monotonic()
    assert error is not None and error.status_code == 503
    assert "stalled" in str(error.body)
    # The clock ran from vLLM's last line, not from the start...
    assert failed_at - frozen_at >= STALL_S - 2, (frozen_at - asked_at, failed_at - frozen_at)
    # ...and stopped it soon after, far from load_timeout_s.
    assert failed_at - frozen_at < STALL_S + 20
    failure = host.status()["models"]["tiny-stall"]["failure"]
    assert failure is not None and "stalled" in failure["reason"]
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in frozen),
        "the frozen backend's processes ending",
        timeout=60,
    )
