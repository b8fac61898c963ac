"""Attacks on the gateway that are about processes, memory and sockets, against the real
`modeld` and `modeld-gateway` processes on the demo config: a gzip bomb, invented model
names, an emptied key file and SIGHUP, a local user reaching for a backend's socket."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest

from modeld.adapters.socketdir import prepare_backend_socket
from modeld.core.config import ModelConfig
from modeld.core.errors import ConfigError
from modeld.testing.ports import wait_until
from tests.support import eventually
from tests.support.processes import BIN, SEED_KEY, curl, running_demo

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
INFERENCE_KEY = "sk-inference-team-0123456789"
AUTH = {"Authorization": f"Bearer {SEED_KEY}"}


def metrics_text(url: str) -> str:
    """The gateway's /metrics, read with the admin key."""
    return subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {SEED_KEY}", f"{url}/metrics"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def _bombs(url: str, count: int) -> list[tuple[int, str]]:
    """`count` gzip bombs (30 KB each, 30 MiB inflated) at once: statuses and codes."""
    bomb = gzip.compress(b'{"model": "demo-chat", "pad": "' + b"0" * 30 * 2**20 + b'"}')
    assert len(bomb) < 40 * 1024
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}

    async def one(http: aiohttp.ClientSession) -> tuple[int, str]:
        async with http.post(f"{url}/v1/chat/completions", data=bomb, headers=headers) as answer:
            return answer.status, (await answer.json())["error"]["code"]

    async with aiohttp.ClientSession() as http:
        return list(await asyncio.gather(*(one(http) for _ in range(count))))


def test_gzip_bombs_are_refused_and_the_gateways_memory_barely_grows(tmp_path: Path) -> None:
    """A 30 KB gzip body that inflates to 30 MiB is 413, alone and three at once, and
    the gateway's peak memory grows by less than 50 MB (it once grew 850 MB a bomb)."""
    with running_demo(tmp_path) as (url, gateway):
        curl(f"{url}/v1/models/status")  # everything the gateway needs is loaded
        before = peak_rss_mb(gateway.pid)
        assert asyncio.run(_bombs(url, 1)) == [(413, "too_large")]
        assert asyncio.run(_bombs(url, 3)) == [(413, "too_large")] * 3
        grown = peak_rss_mb(gateway.pid) - before
        assert grown < 50, f"peak RSS grew {grown:.1f} MB"


def rss_mb(pid: int) -> float:
    """The process's resident memory now (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_requests_waiting_for_a_load_hold_their_bodies_as_sent(tmp_path: Path) -> None:
    """40 gzip bodies of 15 KB, each 15 MiB inflated, wait for demo-large's load: the
    gateway holds what was sent, not what it inflates to (600 MB held before), so its
    memory grows by less than 100 MB, at the peak too."""
    bomb = gzip.compress(b'{"model": "demo-large", "pad": "' + b"0" * 15 * 2**20 + b'"}')
    assert len(bomb) < 20 * 1024

    def slow_load(text: str) -> str:
        slow, count = re.subn(
            r'("demo-large", "--port", "\d+", "--load-seconds", )"3"', r'\1"40"', text
        )
        assert count == 1
        return slow.replace("load_timeout_s = 30", "load_timeout_s = 90")

    def waiting(url: str) -> float:
        # Leases the daemon has waiting: a request asks for one once its body was read.
        found = re.search(r"^vllm:num_requests_waiting (\S+)$", metrics_text(url), re.M)
        return float(found.group(1)) if found else -1.0

    async def attack(url: str, pid: int) -> tuple[float, float]:
        headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        async with aiohttp.ClientSession() as http:

            async def one() -> None:
                async with http.post(f"{url}/v1/completions", data=bomb, headers=headers):
                    pass

            tasks = [asyncio.create_task(one()) for _ in range(40)]

            async def all_waiting() -> bool:
                assert not any(task.done() for task in tasks)
                return waiting(url) >= 40

            await eventually(all_waiting, timeout=60)
            grown = rss_mb(pid), peak_rss_mb(pid)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return grown

    with running_demo(tmp_path, slow_load) as (url, gateway):
        curl(f"{url}/v1/models/status")  # everything the gateway needs is loaded
        before = rss_mb(gateway.pid), peak_rss_mb(gateway.pid)
        now, peak = asyncio.run(attack(url, gateway.pid))
        assert now - before[0] < 100, f"RSS grew {now - before[0]:.1f} MB"
        assert peak - before[1] < 100, f"peak RSS grew {peak - before[1]:.1f} MB"


def test_invented_names_barely_grow_the_log_and_the_metrics(tmp_path: Path) -> None:
    """60 requests naming invented 100 KB models grow the gateway's log by under 1 MB and
    leave /metrics under 64 KB (no name becomes a label or a whole log line)."""
    with running_demo(tmp_path) as (url, _):
        log = tmp_path / "gateway.log"
        before = log.stat().st_size

        async def invent() -> list[int]:
            async with aiohttp.ClientSession() as http:
                statuses = []
                for number in range(60):
                    body = {"model": f"m{number}" + "x" * 100_000, "prompt": "hi"}
                    async with http.post(
                        f"{url}/v1/completions", json=body, headers=AUTH
                    ) as answer:
                        statuses.append(answer.status)
                    # A path of the same size, on the way to a 404.
                    async with http.get(f"{url}/v1/{'p' * 8000}", headers=AUTH) as answer:
                        statuses.append(answer.status)
                return statuses

        assert set(asyncio.run(invent())) == {400, 404}
        metrics = subprocess.run(
            ["curl", "-s", "-H", f"Authorization: Bearer {SEED_KEY}", f"{url}/metrics"],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        assert len(metrics) < 64 * 1024
        grown = log.stat().st_size - before
        assert grown < 1024 * 1024, f"the log grew {grown} bytes"


def _raw_request(url: str, request: bytes) -> bytes:
    """Send `request` as it is on a new connection; what comes back before it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
    return answer


def test_malformed_requests_log_one_short_line_never_a_header(tmp_path: Path) -> None:
    """Folded header lines, bare LF line endings and 200 requests with one bad 8 KB
    header, each carrying the admin key: each is answered 400, the log never holds the
    key or a traceback, and it grows by under 32 KB (one short line each, at most 30 a
    minute; before, 3.3 MB and every key)."""
    key = f"Authorization: Bearer {SEED_KEY}".encode()
    folded = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n  folded\r\n\r\n"
    bare = b"GET /v1/models HTTP/1.1\nHost: x\n" + key + b"\n\n"
    bad = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + key + b"\r\nX-Bad\x01: " + b"v" * 8000
    with running_demo(tmp_path) as (url, _):
        log = tmp_path / "gateway.log"
        before = log.stat().st_size
        for request in (folded, bare, *[bad + b"\r\n\r\n"] * 200):
            status_line = _raw_request(url, request).split(b"\r\n")[0]
            assert status_line.endswith(b" 400 Bad Request"), request[:40]
        curl(f"{url}/v1/models")  # still serving
        written = log.read_text()[before:]
    assert SEED_KEY not in written
    assert "Traceback" not in written
    assert len(written) < 32 * 1024, f"the log grew {len(written)} bytes"
    assert "gateway.bad_request" in written


def test_an_emptied_key_file_keeps_the_keys_in_force_after_sighup(tmp_path: Path) -> None:
    """The inference key file is emptied and the gateway told to reload: the keys loaded
    stay in force (the inference key still works, no key is still 401), an error is
    logged and counted. A gateway started with an empty key file does not start (78)."""
    keys = tmp_path / "inference-keys"
    keys.write_text(f"team {INFERENCE_KEY}\n")

    def with_keys(text: str) -> str:
        return text.replace("[gateway]\n", f'[gateway]\ninference_keys_file = "{keys}"\n')

    with running_demo(tmp_path, with_keys) as (url, gateway):
        status = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/v1/models"]
        as_team = [*status, "-H", f"Authorization: Bearer {INFERENCE_KEY}"]

        def code(command: list[str]) -> str:
            return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout

        assert code(as_team) == "200"
        keys.write_text("# emptied by mistake\n")
        gateway.send_signal(signal.SIGHUP)
        log = tmp_path / "gateway.log"
        wait_until(lambda: "gateway.reload_rejected" in log.read_text(), "the reload refused")
        assert code(as_team) == "200"
        assert code(status) == "401"
        text = metrics_text(url)
        assert "modeld_gateway_key_reload_failures_total 1.0" in text
        config = next(tmp_path.glob("*.toml"))
    started = subprocess.run(
        [BIN / "modeld-gateway", "--config", config, "--socket", tmp_path / "none.sock"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 78
    assert "holds no key" in started.stderr


def completed(url: str, model: str) -> bool:
    """Whether a completion request for `model` through the gateway is answered by it."""
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": 1})
    headers = ["-H", "Content-Type: application/json"]
    answer = curl("-X", "POST", *headers, f"{url}/v1/completions", "-d", body)
    return bool(answer["model"] == model)


def _connects_as(path: Path, uid: int, groups: list[int]) -> bool:
    """Whether a process of `uid` with `groups` can connect to the Unix socket `path`
    (a forked child that drops to them)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's outcome is its exit code
        try:
            os.setgroups(groups)
            os.setgid(groups[0])
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
            os._exit(0)
        except PermissionError:
            os._exit(13)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 13), f"the probe failed otherwise ({code})"
    return code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
def test_a_backends_socket_is_out_of_reach_of_users_outside_the_gateways_group(
    tmp_path: Path,
) -> None:
    """A sleep-mode backend on a Unix socket: the daemon makes its directory 2750 in the
    socket group and starts it with umask 007, so a user in that group (the gateway's)
    can connect and any other local user cannot reach /sleep or anything else; the
    socket file a stopped backend leaves does not stop it from starting again."""
    try:
        group = grp.getgrnam("users")
    except KeyError:
        pytest.skip("no 'users' group to stand for the gateway's")
    # Where any user may walk up to the backends' directory's door (pytest's own
    # directories are 0700): the directory itself must then keep them out.
    walkable = Path(tempfile.mkdtemp(prefix="modeld-backends-"))
    walkable.chmod(0o755)
    backends = walkable / "backends"

    def in_group(text: str) -> str:
        text = text.replace(str(tmp_path / "backends"), str(backends))
        return text.replace("[daemon]\n", '[daemon]\nsocket_group = "users"\n')

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, walkable, ignore_errors=True)
        url, _ = cleanup.enter_context(running_demo(tmp_path, in_group))
        assert completed(url, "demo-chat")
        sock = backends / "demo-chat.sock"
        info = backends.stat()
        assert (info.st_mode & 0o7777, info.st_gid) == (0o2750, group.gr_gid)
        assert _connects_as(sock, 65534, [group.gr_gid])
        assert not _connects_as(sock, 65534, [65534])
        # And the daemon still reaches it (it reads its health through it).
        status = curl(f"{url}/v1/models/status")
        assert status["models"]["demo-chat"]["health"] == "healthy"
        # Stopped, a backend leaves its socket file (vLLM does not remove it, nor one it
        # finds at start): the daemon clears it, so the model starts again.
        assert curl("-X", "POST", f"{url}/v1/models/demo-chat/stop")["status"] == "stopped"
        assert sock.is_socket()
        assert completed(url, "demo-chat")


def _a_link_another_user_owns(tmp_path: Path) -> tuple[Path, Path]:
    """A sticky, world-writable directory (as /tmp is) holding a link owned by nobody
    that points, for now, at a directory of root's: the link, and that directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a link to another user")
    sticky, roots = tmp_path / "tmp", tmp_path / "roots"
    sticky.mkdir()
    sticky.chmod(0o1777)
    roots.mkdir()
    link = sticky / "modeld-demo"
    link.symlink_to(roots)
    os.lchown(link, 65534, 65534)  # nobody may now point it anywhere
    return link, roots


def _refused_at_start(tmp_path: Path, socket: Path) -> str:
    """modeld started with its socket at `socket`: it must exit 78; what it said."""
    config = tmp_path / "modeld.toml"
    config.write_text(
        '[gpu]\nbackend = "simulated"\n[models.m]\nruntime = "process"\n'
        'command = ["true"]\nendpoint = "http://127.0.0.1:9"\n'
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "modeld", "--config", config, "--socket", socket],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stderr
    return done.stderr + done.stdout


def test_the_daemon_refuses_a_socket_path_through_a_link_another_user_owns(
    tmp_path: Path,
) -> None:
    """The daemon's socket through a link that nobody owns in a sticky directory: it
    leads to root's directory now, but nobody could repoint it and answer the daemon's
    clients (and receive its backends' sockets). modeld exits 78 naming the link and its
    owner, and makes nothing at the far end."""
    link, roots = _a_link_another_user_owns(tmp_path)
    said = _refused_at_start(tmp_path, link / "modeld.sock")
    assert f"{link} is a symbolic link owned by uid 65534" in said, said
    assert list(roots.iterdir()) == []


def test_backend_sockets_are_not_made_through_a_link_another_user_owns(tmp_path: Path) -> None:
    """A backend's socket directory through nobody's link is refused, naming the link,
    and nothing is made; through a link root owns (as /var/run is), it is made."""
    link, roots = _a_link_another_user_owns(tmp_path)
    endpoint = f"unix:{link / 'backends' / 'm.sock'}"
    model = ModelConfig(runtime="process", command=["true"], endpoint=endpoint)
    with pytest.raises(ConfigError, match=f"{link} is a symbolic link owned by uid 65534"):
        prepare_backend_socket(model, None)
    assert list(roots.iterdir()) == []
    os.lchown(link, 0, 0)
    prepare_backend_socket(model, None)
    assert oct((roots / "backends").stat().st_mode & 0o7777) == oct(0o2750)


def test_the_daemon_refuses_a_socket_directory_another_user_owns(tmp_path: Path) -> None:
    """modeld does not bind its socket in a directory owned by someone else (they could
    swap the socket for theirs): it exits 78 naming the directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert "owned by uid 65534" in _refused_at_start(tmp_path, theirs / "m.sock")
