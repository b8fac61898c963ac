"""modeld under systemd: the notify protocol, socket activation, reload and stop signals,
and the unit files themselves. The daemon runs as its own process, as systemd runs it."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeld.testing.ports import free_port, wait_listening, wait_until

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"


def demo_like_config(path: Path, socket_path: Path, models: list[str]) -> None:
    """A process-runtime config of fake vLLM models on free ports."""
    lines = [
        "[daemon]",
        f'socket = "{socket_path}"',
        f'state_dir = "{path.parent / "state"}"',
        "poll_interval_s = 0.2",
        "health_poll_interval_s = 0.05",
        "[gpu]",
        'backend = "simulated"',
        "devices_gb = [24]",
        "release_delay_s = 0.1",
    ]
    for name in models:
        port = free_port()
        lines += [
            f'[models."{name}"]',
            'runtime = "process"',
            f'command = ["modeld-fake-vllm", "--model", "{name}", "--port", "{port}", '
            '"--load-seconds", "0.2"]',
            f'endpoint = "http://127.0.0.1:{port}"',
            "gpu_memory_gb = 8",
        ]
    path.write_text("\n".join(lines) + "\n")


def call(socket_path: Path, method: str, **params: object) -> Any:
    """One JSON-RPC call over a plain blocking socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())


def spawn(argv: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start a process with extra environment, stderr to `log`."""
    with log.open("ab") as handle:
        return subprocess.Popen(argv, stderr=handle, env={**os.environ, **env})


def modeld(config: Path) -> list[str]:
    """The daemon's command line."""
    return [sys.executable, "-m", "modeld", "--config", str(config)]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket playing systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def messages(sock: socket.socket) -> Iterator[dict[str, str]]:
    """Notify messages as dicts, as they arrive."""
    while True:
        raw = sock.recv(4096).decode()
        yield dict(line.split("=", 1) for line in raw.splitlines())


def test_notify_ready_status_watchdog_stopping(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """READY once the socket answers, STATUS as models change, WATCHDOG well within its
    deadline, STOPPING on SIGTERM."""
    sock_path, config = tmp_path / "modeld.sock", tmp_path / "modeld.toml"
    demo_like_config(config, sock_path, ["alpha"])
    daemon = spawn(
        modeld(config),
        tmp_path / "log",
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        WATCHDOG_USEC="400000",
    )
    try:
        inbox = messages(notify_socket)
        ready = next(m for m in inbox if "READY" in m)
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(daemon.pid)
        assert ready["STATUS"].endswith("GB free")
        assert call(sock_path, "ping")["result"] == {"pong": True, "version": "0.1.0"}

        assert "result" in call(sock_path, "switch", model="alpha")
        status = next(m["STATUS"] for m in inbox if "1 running" in m.get("STATUS", ""))
        assert status == "1 running · 16.0 GB free"

        pings = []
        for message in inbox:
            if "WATCHDOG" in message:
                pings.append(time.monotonic())
            if len(pings) == 6:
                break
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # Pinged at half the period: always well before systemd's 0.4 s deadline.
        assert max(gaps) < 0.4

        daemon.send_signal(signal.SIGTERM)
        assert next(m for m in inbox if "STOPPING" in m)["STOPPING"] == "1"
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.kill()
        daemon.wait()


def test_socket_activation_serves_early_client(tmp_path: Path) -> None:
    """Under systemd-socket-activate, a client that connects before modeld runs gets its
    answer, and modeld leaves systemd's socket in place when it stops."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (apt-get install systemd)")
    sock_path, config = tmp_path / "activated.sock", tmp_path / "modeld.toml"
    demo_like_config(config, tmp_path / "unused.sock", ["alpha"])
    launcher = spawn([activate, "-l", str(sock_path), *modeld(config)], tmp_path / "log")
    try:
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(30)

        def connected() -> bool:  # the launcher binds before it listens
            try:
                client.connect(str(sock_path))
            except (FileNotFoundError, ConnectionRefusedError):
                return False
            return True

        wait_until(connected, "systemd-socket-activate to listen", timeout=10, interval=0.01)
        # modeld is started by this very connection, and answers it.
        with client:
            client.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
            answer = json.loads(client.makefile("rb").readline())
        assert answer["result"]["models"]["alpha"]["status"] == "stopped"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0
        assert sock_path.exists()
        assert not (tmp_path / "unused.sock").exists()
    finally:
        launcher.kill()
        launcher.wait()


def test_sighup_applies_a_valid_config_and_keeps_the_old_on_error(tmp_path: Path) -> None:
    """SIGHUP: a new model appears; then a broken file is rejected and logged."""
    sock_path, config, log = tmp_path / "modeld.sock", tmp_path / "modeld.toml", tmp_path / "log"
    demo_like_config(config, sock_path, ["alpha"])
    daemon = spawn(modeld(config), log)
    try:
        wait_listening(sock_path, alive=lambda: daemon.poll() is None)
        demo_like_config(config, sock_path, ["alpha", "beta"])
        daemon.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "beta" in call(sock_path, "status")["result"]["models"],
            "the reload to apply",
            timeout=10,
        )
        config.write_text(config.read_text().replace("gpu_memory_gb = 8", "gpu_memory_gb = -8"))
        daemon.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "config.reload_rejected" in log.read_text(),
            "the rejection to be logged",
            timeout=10,
        )
        assert "gpu_memory_gb" in log.read_text()
        models = call(sock_path, "models")["result"]
        assert [m["name"] for m in models] == ["alpha", "beta"]
        assert daemon.poll() is None
        outcome = call(sock_path, "reload")
        assert outcome["error"]["data"]["error"] == "invalid_config"
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The shipped units, with ExecStart pointing at this installation's modeld."""
    executable = Path(sys.executable).parent / "modeld"
    assert executable.exists(), "install modeld (pip install -e .) to check the unit"
    for unit in ("modeld.service", "modeld-gateway.service"):
        text = (UNITS / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/opt/modeld/bin/", f"{executable.parent}/"))
    shutil.copy(UNITS / "modeld.socket", tmp_path / "modeld.socket")
    return tmp_path


def systemd_analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze on the units in `unit_dir` (skip where it is not installed)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run(
        [analyze, *args], cwd=unit_dir, capture_output=True, text=True, timeout=60
    )


def test_units_verify_clean(unit_dir: Path) -> None:
    """`systemd-analyze verify` finds nothing to say about the units."""
    units = ("modeld.socket", "modeld.service", "modeld-gateway.service")
    result = systemd_analyze(unit_dir, "verify", *units)
    assert result.returncode == 0, result.stderr
    assert "modeld" not in result.stderr, result.stderr


@pytest.mark.parametrize("unit", ["modeld.service", "modeld-gateway.service"])
def test_service_exposure_at_most_2(unit_dir: Path, unit: str) -> None:
    """`systemd-analyze security --offline=true` rates each service 2.0 or better."""
    result = systemd_analyze(unit_dir, "security", "--offline=true", unit)
    found = re.search(rf"Overall exposure level for {unit}: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0


def test_service_is_bounded_in_memory_tasks_and_files() -> None:
    """A runaway daemon (or a flood that got past its limits) hits the unit's ceilings
    before it hurts the host's models."""
    for name in ("modeld.service", "modeld-gateway.service"):
        unit = (ROOT / "systemd" / name).read_text()
        for limit in ("MemoryMax=", "TasksMax=", "LimitNOFILE="):
            assert re.search(rf"^{limit}\S+", unit, re.M), (name, limit)
