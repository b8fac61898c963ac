"""The daemon and modelctl as a user runs them: real processes, the demo config."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from modeld.adapters.gpu.base import pid_alive
from modeld.demo.main import private_copy
from modeld.testing.ports import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "etc/modeld/demo.toml"


MODELCTL = [sys.executable, "-m", "modeld.cli.ctl"]


def modelctl(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run modelctl against `socket`."""
    return subprocess.run(
        [sys.executable, "-m", "modeld.cli.ctl", "--socket", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def demo_daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`modeld --config etc/modeld/demo.toml` on a private socket, until it answers ping."""
    socket = tmp_path / "modeld.sock"
    log = (tmp_path / "modeld.log").open("w")
    config = private_copy(DEMO, tmp_path, fresh_ports=True)  # a run of its own
    daemon = subprocess.Popen(
        [sys.executable, "-m", "modeld", "--config", str(config), "--socket", str(socket)],
        stderr=log,
        text=True,
        cwd=ROOT,
    )

    def answers() -> bool:
        assert daemon.poll() is None, (tmp_path / "modeld.log").read_text()
        return modelctl(socket, "ping").returncode == 0

    wait_until(answers, "modeld answering ping")
    yield daemon, socket
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
    log.close()


def test_modelctl_against_the_daemon(demo_daemon: tuple[subprocess.Popen[str], Path]) -> None:
    """--json output parses; a switch runs; refusals exit 1; SIGTERM exits 0 and cleans up."""
    daemon, socket = demo_daemon
    status = modelctl(socket, "--json", "status")
    assert status.returncode == 0
    assert set(json.loads(status.stdout)["models"]) == {
        "demo-chat",
        "demo-coder",
        "demo-large",
        "demo-large-sql",
        "demo-large-poet",
    }

    switched = modelctl(socket, "switch", "demo-coder", "--json")
    assert switched.returncode == 0, switched.stderr
    assert json.loads(switched.stdout)["state"] == "running"

    table = modelctl(socket, "status")
    assert table.returncode == 0
    assert "demo-coder" in table.stdout and "running" in table.stdout

    loaded = modelctl(socket, "ps")  # only what is loaded
    assert loaded.returncode == 0
    assert "demo-coder" in loaded.stdout and "demo-large" not in loaded.stdout

    told = modelctl(socket, "history", "demo-coder")
    assert told.returncode == 0, told.stderr
    assert "demo-coder: switch planned:" in told.stdout
    assert "demo-coder: loading -> running (healthy) after" in told.stdout

    # A dry run: in sentences, and nothing moves.
    planned = modelctl(socket, "plan", "demo-large")
    assert planned.returncode == 0, planned.stderr
    assert "switch to demo-large:" in planned.stdout and "nothing was changed" in planned.stdout
    assert "demo-coder: holds" in planned.stdout
    still = json.loads(modelctl(socket, "--json", "status").stdout)["models"]
    assert still["demo-coder"]["status"] == "running"
    assert still["demo-large"]["status"] == "stopped"

    # Each device's health, and an operator's reset of one (ok already: stays ok).
    gpu = modelctl(socket, "gpu")
    assert gpu.returncode == 0, gpu.stderr
    assert "GB free, ok" in gpu.stdout
    reset = modelctl(socket, "gpu", "reset-health", "0")
    assert reset.returncode == 0, reset.stderr
    assert "GPU 0 " in reset.stdout
    assert modelctl(socket, "gpu", "reset-health", "9").returncode == 1
    assert modelctl(socket, "gpu", "reset-health").returncode == 2

    unknown = modelctl(socket, "switch", "demo-chta")
    assert unknown.returncode == 1
    # One sentence, never wrapped off a terminal (a grep finds it whole).
    assert (
        "Did you mean demo-chat? The models: demo-chat, demo-coder, demo-large, "
        "demo-large-poet and demo-large-sql (also sql)."
    ) in (unknown.stderr)

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert not socket.exists()


def test_modelctl_finds_the_socket_in_a_config_and_reloads_it(
    demo_daemon: tuple[subprocess.Popen[str], Path], tmp_path: Path
) -> None:
    """`modelctl --config FILE` reaches the daemon at that file's daemon.socket (a bad
    file is a usage error naming it); `modelctl reload` applies the edited config and
    says what changed, in sentences."""
    _, socket = demo_daemon
    # The daemon's own config, naming the socket it listens on.
    config = tmp_path / "client.toml"
    demo = (tmp_path / "demo.toml").read_text()
    config.write_text(re.sub(r"^socket = .*$", f'socket = "{socket}"', demo, flags=re.M))
    found = subprocess.run(
        [*MODELCTL, "--config", str(config), "ping"], capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert str(socket) in found.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[daemon\n")
    refused = subprocess.run(
        [*MODELCTL, "--config", str(broken), "ping"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "broken.toml" in refused.stderr

    same = modelctl(socket, "reload")
    assert same.returncode == 0, same.stderr
    assert "nothing changed" in same.stdout
    daemon_config = tmp_path / "demo.toml"
    text = daemon_config.read_text()
    chat = text[text.index('[models."demo-chat"]') : text.index('[models."demo-coder"]')]
    extra = chat.replace('"demo-chat"', '"demo-extra"').replace("demo-chat", "demo-extra")
    daemon_config.write_text(text + "\n" + extra)
    added = modelctl(socket, "reload")
    assert added.returncode == 0, added.stderr
    assert "demo-extra: added" in added.stdout


def test_unreachable_daemon_exit_3_names_socket(tmp_path: Path) -> None:
    """With nothing on the socket modelctl exits 3 and says which socket it tried."""
    socket = tmp_path / "absent.sock"
    result = modelctl(socket, "status")
    assert result.returncode == 3
    assert str(socket) in result.stderr
    assert "no such socket" in result.stderr


def test_usage_error_exit_2() -> None:
    """A malformed command line exits 2."""
    result = subprocess.run(
        [sys.executable, "-m", "modeld.cli.ctl", "switch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2


def test_demo_command_switches_between_models() -> None:
    """The README's demo (`modeld-demo`) runs the daemon and switches: it parks one
    model with sleep mode (real fake-vLLM processes), and wakes it back; then requests
    through the gateway are answered by the models they name."""
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run(
        [sys.executable, "-m", "modeld.demo.main"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parked (sleep mode) demo-chat to free memory" in result.stdout
    assert "demo-large is running and healthy" in result.stdout
    assert "demo-chat: running -> sleeping (parked for demo-large)" in result.stdout
    assert "woke demo-chat from sleep" in result.stdout
    assert "demo-large answered: 'demo-large ok ok ok ok ok'" in result.stdout
    assert "demo-chat answered: 'demo-chat ok ok ok ok ok'" in result.stdout
    # An adapter switch beside the model switches: demo-large is not restarted for it,
    # and a request naming the adapter's alias is answered by the adapter.
    assert "demo-large-sql is running and healthy" in result.stdout
    assert "demo-large-poet: stopped -> loading (start)" in result.stdout
    assert "sql answered: 'demo-large-sql ok ok ok ok ok'" in result.stdout
    assert "demo done" in result.stdout
    # What it prints works as printed: the socket to export, and the curl line it ran.
    assert re.search(r"export MODELD_SOCKET=/\S+/modeld\.sock; modelctl watch", result.stdout)
    curls = [line[2:] for line in result.stdout.splitlines() if line.startswith("$ curl ")]
    assert len(curls) == 3
    argv = shlex.split(curls[0])
    assert argv[:2] == ["curl", "-sN"] and json.loads(argv[-1])["model"] == "demo-large"
    if shutil.which("curl"):
        assert "curl is not installed" not in result.stdout


def port_answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_process_backends_end_with_the_daemon(
    demo_daemon: tuple[subprocess.Popen[str], Path], how: signal.Signals
) -> None:
    """Process backends cannot be adopted, so they end with the daemon, even on kill -9.
    (demo-large: the one on TCP, whose port the test can probe.)"""
    daemon, socket_path = demo_daemon
    switched = modelctl(socket_path, "--json", "switch", "demo-large")
    assert switched.returncode == 0, switched.stderr
    status = json.loads(modelctl(socket_path, "--json", "status").stdout)
    backend = status["models"]["demo-large"]["backend_pid"]
    port = urlparse(status["models"]["demo-large"]["endpoint"]).port
    assert port is not None and port_answers(port)
    daemon.send_signal(how)
    daemon.wait(timeout=30)
    wait_until(
        lambda: not pid_alive(backend) and not port_answers(port),
        "the backend to end with the daemon",
        timeout=15,
    )


def test_top_draws_the_dashboard(demo_daemon: tuple[subprocess.Popen[str], Path]) -> None:
    """`modelctl top --once` draws the models, a memory bar per GPU and loads in progress."""
    _, socket_path = demo_daemon
    assert modelctl(socket_path, "switch", "demo-large", "--no-wait").returncode == 0
    top = modelctl(socket_path, "top", "--once")
    assert top.returncode == 0, top.stderr
    assert "demo-large" in top.stdout
    assert "GPU 0" in top.stdout
    assert "/ 24.0 GB" in top.stdout


def test_modelctl_logs_follow_prints_new_lines_until_the_backend_ends(
    demo_daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    """`modelctl logs MODEL -f` prints the last lines, then each request's line as the
    backend prints it (pushed, not polled), and exits 0 when the model is stopped."""
    _, socket_path = demo_daemon
    assert modelctl(socket_path, "switch", "demo-large").returncode == 0
    status = json.loads(modelctl(socket_path, "--json", "status").stdout)
    endpoint = status["models"]["demo-large"]["endpoint"]
    follower = subprocess.Popen(
        [*MODELCTL, "--socket", str(socket_path), "logs", "demo-large", "-f"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        seen = []
        for line in follower.stdout:  # the tail comes first
            seen.append(line)
            if "serving demo-large" in line:
                break
        body = json.dumps({"model": "demo-large", "prompt": "hi"}).encode()
        request = urllib.request.Request(
            f"{endpoint}/v1/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        for line in follower.stdout:
            seen.append(line)
            if '"POST /v1/completions HTTP/1.1" 200' in line:
                break
        assert modelctl(socket_path, "stop", "demo-large").returncode == 0
        assert follower.wait(timeout=60) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert any("loading demo-large" in line for line in seen)


COMPLETE = """
source <(modelctl completion bash)
complete_line() {
  COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9
  read -ra COMP_WORDS <<< "$1"; COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  _python_argcomplete modelctl
  printf '%s\\n' "${COMPREPLY[@]}" | sort; echo --
}
"""


def test_bash_completes_commands_options_and_the_daemons_models(
    demo_daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    """`eval "$(modelctl completion bash)"`: bash completes subcommands, their options and
    the model names the running daemon has."""
    _, socket_path = demo_daemon
    lines = [
        "modelctl sw",
        "modelctl logs demo-chat --fo",
        f"modelctl --socket {socket_path} switch demo-c",
        f"modelctl --socket {socket_path} logs demo-l",
    ]
    script = COMPLETE + "".join(f"complete_line '{line}'\n" for line in lines)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    answers = [block.split() for block in done.stdout.split("--\n")[:-1]]
    # demo-l: demo-large and its two adapters.
    assert answers == [
        ["switch"],
        ["--follow"],
        ["demo-chat", "demo-coder"],
        ["demo-large", "demo-large-poet", "demo-large-sql"],
    ]


def test_piped_output_is_never_wrapped_and_options_go_after_the_command(tmp_path: Path) -> None:
    """`modelctl logs` into a pipe prints a backend's 200-character line whole (a grep
    finds it), and the global options work after the command as before it
    (`modelctl ping --config FILE`, `modelctl logs M --socket S`)."""
    socket = tmp_path / "modeld.sock"
    config = tmp_path / "modeld.toml"
    line = "x" * 100 + " the middle " + "y" * 100
    # The sleep is the backend's lifetime (it is stopped long before), not a wait of the test.
    program = f"print({line!r}, flush=True); import time; time.sleep(60)"
    config.write_text(
        f'[daemon]\nsocket = "{socket}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[gpu]\nbackend = "simulated"\n'
        f'[models.m]\nruntime = "process"\ncommand = ["{sys.executable}", "-c", "{program}"]\n'
        'endpoint = "http://127.0.0.1:9"\ngpu_memory_gb = 10\n'
    )
    log = (tmp_path / "modeld.log").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "modeld", "--config", str(config)], stderr=log)
    try:
        after = [*MODELCTL, "ping", "--config", str(config)]
        wait_until(lambda: subprocess.run(after, capture_output=True).returncode == 0, "ping")
        assert (
            subprocess.run(
                [*MODELCTL, "switch", "m", "--no-wait", "--config", str(config)],
                capture_output=True,
            ).returncode
            == 0
        )

        def printed() -> bool:
            logs = [*MODELCTL, "logs", "m", "--socket", str(socket)]
            return line in subprocess.run(logs, capture_output=True, text=True).stdout

        wait_until(printed, "the backend's line, whole, through a pipe")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
