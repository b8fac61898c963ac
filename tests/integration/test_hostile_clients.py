"""Clients that misbehave (flood without reading, hang up mid-subscribe, hoard
connections, stall mid-line, send odd JSON) cannot exhaust the daemon or make everyone
else wait; read-only peers see no backend output; every refusal leaves an audit line."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from modeld.cli.render import render_status
from modeld.client import Client
from modeld.daemon.access import AccessPolicy
from modeld.daemon.server import MAX_BATCH, Limits, RpcServer
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.testing.ports import wait_until
from modeld.wire.status import Status
from tests.support import EngineFactory, eventually, make_config

NOBODY = 65534
MODELS = {"alpha": {"gpu_memory_gb": 10}, "beta": {"gpu_memory_gb": 10}}
STATUS = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'


Server = tuple[Path, Engine, FakeRuntime, RpcServer]
ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def server(engines: EngineFactory, shared_dir: Path) -> AsyncIterator[ServerFactory]:
    """Start an RpcServer with given limits and policy on a socket anyone may open."""
    made: list[RpcServer] = []

    async def start(limits: Limits | None = None, policy: AccessPolicy | None = None) -> Server:
        engine, runtime, _ = await engines(make_config(MODELS, [60]))
        path = shared_dir / f"modeld-{len(made)}.sock"
        rpc = RpcServer(engine, path, 0o660, None, policy, limits=limits)
        await rpc.start()
        path.chmod(0o666)  # for the other uids in these tests only
        made.append(rpc)
        return path, engine, runtime, rpc

    yield start
    for rpc in made:
        await rpc.close()


def daemon_rss_kb(pid: int) -> int:
    """A process's resident memory, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flood(path: Path, payload: bytes, seconds: float) -> int:
    """Send `payload` without ever reading an answer, for at most `seconds` of being
    blocked; how many bytes the daemon took."""
    sent = 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.settimeout(seconds)
        try:
            while sent < len(payload):
                sent += sock.send(payload[sent : sent + 65536])
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
    return sent


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """A real modeld process (simulated GPU, four models) with a short write deadline."""
    models = "".join(
        f'[models.m{i}]\nruntime = "process"\ncommand = ["unused"]\n'
        f'endpoint = "http://127.0.0.1:{9 + i}"\ngpu_memory_gb = 10\n'
        for i in range(4)
    )
    config = tmp_path / "modeld.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}"\nclient_write_timeout_s = 3\n'
        f'[gpu]\nbackend = "simulated"\ndevices_gb = [80]\n{models}'
    )
    path, log = tmp_path / "modeld.sock", tmp_path / "modeld.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modeld", "--config", str(config), "--socket", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: path.exists() and _pings(path), "modeld answering")
        yield process, path, log
    finally:
        process.terminate()
        process.wait(30)


def _pings(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(PING)
            return b'"pong":true' in sock.makefile("rb").readline()
    except OSError:
        return False


async def test_a_flood_without_reading_stays_small_and_others_are_served(
    daemon: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    """40,000 status calls (in 100-call batches and single lines) and 700,000 junk lines
    from clients that never read: the daemon grows by well under 150 MB, answers others
    meanwhile, cuts the flooders off, and logs their departure once, not per answer."""
    process, path, log = daemon
    before = daemon_rss_kb(process.pid)
    batch = json.dumps([json.loads(STATUS)] * MAX_BATCH).encode() + b"\n"
    floods = [
        asyncio.to_thread(flood, path, batch * 400, 5),
        asyncio.to_thread(flood, path, STATUS * 40_000, 5),
        asyncio.to_thread(flood, path, b"x\n" * 700_000, 5),
    ]
    running = asyncio.gather(*floods)
    peak = before
    async with Client(path) as bystander:
        while not running.done():
            async with asyncio.timeout(2):
                assert (await bystander.call("ping"))["pong"] is True
            peak = max(peak, daemon_rss_kb(process.pid))
            # A sampling cadence for the daemon's memory while the floods run (the
            # loop ends on their event, `running.done()`), not a wait for a condition.
            await asyncio.sleep(0.05)
    await running
    grown_mb = (peak - before) / 1024
    assert grown_mb < 50, f"grew by {grown_mb:.0f} MB"

    def cut_off() -> bool:
        return log.read_text().count("rpc.client_not_reading") >= 1

    wait_until(cut_off, "the daemon cutting off a client that does not read", timeout=30)
    assert log.read_text().count("rpc.caller_gone") <= 3
    assert _pings(path)


async def test_subscribers_that_hang_up_leave_no_subscription(server: ServerFactory) -> None:
    """300 clients that subscribe and half-close at once (what socat does) leave zero
    subscriptions behind; a connection holds at most one."""
    path, engine, _, rpc = await server(Limits(max_connections=512))
    subscribe = b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n'

    def hang_up() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(subscribe)
            sock.shutdown(socket.SHUT_WR)

    await asyncio.gather(*(asyncio.to_thread(hang_up) for _ in range(300)))

    async def none_left() -> bool:
        return bool(engine.view.status().subscribers == 0 and rpc.connections == 0)

    await eventually(none_left, timeout=20)
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(subscribe * 5)
    answers = [json.loads(await reader.readline()) for _ in range(5)]
    assert [a["result"]["already"] for a in answers] == [False, True, True, True, True]
    assert engine.view.status().subscribers == 1
    writer.close()
    await eventually(none_left, timeout=20)


def _hoard(path: Path, count: int) -> dict[str, Any]:
    """Open `count` connections and keep the admitted ones open, idle; what happened."""
    held: list[socket.socket] = []
    refused: dict[str, int] = {}
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        sock.settimeout(0.2)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            held.append(sock)  # admitted: an idle connection, kept open
            continue
        reason = json.loads(answer)["error"]["data"]["reason"]
        refused[reason] = refused.get(reason, 0) + 1
        sock.close()
    return {"held": len(held), "refused": refused, "sockets": held}


def _call(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        answer: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return answer


class AsUser:
    """A forked child that runs as another uid: it reports one JSON result through a
    pipe, then holds what it opened until released (the answers come from this process's
    own event loop, so the child is waited on off the loop)."""

    def __init__(self, uid: int, work: Any, *args: Any) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root to act as other uids")
        result_read, result_write = os.pipe()
        self._release_read, self._release_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self._release_write)
                os.close(result_read)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                outcome = work(*args)
                kept = outcome.pop("sockets", None)  # noqa: F841 (held open until released)
                os.write(result_write, json.dumps(outcome).encode())
                os.close(result_write)
                os.read(self._release_read, 1)
            finally:
                os._exit(0)
        os.close(result_write)
        os.close(self._release_read)
        self._result = result_read

    async def result(self) -> dict[str, Any]:
        """What the child reported."""

        def read() -> bytes:
            return b"".join(iter(lambda: os.read(self._result, 65536), b""))

        outcome: dict[str, Any] = json.loads(await asyncio.to_thread(read))
        return outcome

    def release(self) -> None:
        """Let the child exit, closing what it held."""
        os.close(self._release_write)
        os.close(self._result)
        os.waitpid(self.pid, 0)


STATUS_REQUEST = {"jsonrpc": "2.0", "id": 1, "method": "status"}


async def test_one_uid_cannot_hoard_the_connections(server: ServerFactory) -> None:
    """500 idle connections from one uid get only its share; another uid and root are
    still served, and root's reserved slots stay free for it."""
    limits = Limits(max_connections=64, per_uid=32, reserved=8)
    path, _, _, rpc = await server(limits)
    hoarder = AsUser(NOBODY, _hoard, path, 500)
    try:
        counts = await hoarder.result()
        assert counts["held"] == 32
        assert counts["refused"] == {f"uid {NOBODY} holds its share of connections": 468}
        other = AsUser(1, _call, path, STATUS_REQUEST)
        answer = await other.result()
        other.release()
        assert answer["result"]["models"]["alpha"]["status"] == "stopped"
        async with Client(path) as root:
            assert (await root.call("status"))["models"]["alpha"]["status"] == "stopped"
        assert rpc.connections >= 32
    finally:
        hoarder.release()


async def test_reserved_slots_stay_for_root(server: ServerFactory) -> None:
    """When other uids fill every unreserved slot, root still gets in."""
    limits = Limits(max_connections=20, per_uid=100, reserved=4)
    path, _, _, _ = await server(limits)
    hoarder = AsUser(NOBODY, _hoard, path, 40)
    try:
        counts = await hoarder.result()
        assert counts["held"] == 16
        assert list(counts["refused"]) == [
            "the remaining connections are reserved for root and allowed callers"
        ]
        async with Client(path) as root:
            assert (await root.call("ping"))["pong"] is True
    finally:
        hoarder.release()


async def test_an_unfinished_line_times_out(server: ServerFactory) -> None:
    """A client that starts a line and stalls is told so and disconnected; a client that
    idles between whole lines is not."""
    path, _, _, _ = await server(Limits(line_timeout_s=0.2))
    idle_reader, idle_writer = await asyncio.open_unix_connection(str(path))
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b'{"jsonrpc":"2.0","id":1,"meth')
    answer = json.loads(await reader.readline())
    assert answer["error"]["data"]["error"] == "line_timeout"
    assert await reader.read() == b""
    writer.close()
    idle_writer.write(PING)
    assert json.loads(await idle_reader.readline())["result"]["pong"] is True
    idle_writer.close()


async def test_odd_methods_and_big_batches_get_answers(server: ServerFactory) -> None:
    """A non-string method is an Invalid Request, a batch over the limit is refused, and
    the connection stays usable."""
    path, _, _, _ = await server()
    reader, writer = await asyncio.open_unix_connection(str(path))
    big = json.dumps([json.loads(PING)] * (MAX_BATCH + 1)).encode() + b"\n"
    for line in (
        b'{"jsonrpc":"2.0","id":1,"method":["status"]}\n',
        b'{"jsonrpc":"2.0","id":2,"method":{"a":1}}\n',
        big,
        PING,
    ):
        writer.write(line)
    answers = [json.loads(await reader.readline()) for _ in range(4)]
    assert [a.get("error", {}).get("code") for a in answers] == [-32600, -32600, -32600, None]
    assert answers[2]["error"]["data"] == {"error": "batch_too_large", "limit": MAX_BATCH}
    writer.close()


async def test_read_only_peers_see_no_backend_output(
    server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """With access control on, a caller who may not change models gets neither `logs`
    nor failure lines in `status` (vLLM logs its --api-key, and prompts); each refusal
    is logged with the caller."""
    path, engine, runtime, _ = await server(policy=AccessPolicy(allow_uids=[12345]))
    runtime.behaviour["alpha"] = Behaviour(exit_code=1)
    with pytest.raises(Exception, match="exited"):
        await engine.models.switch("alpha")
    async with Client(path) as root:
        lines = (await root.call("status"))["models"]["alpha"]["failure"]["last_lines"]
        assert lines
    reader = AsUser(NOBODY, _call, path, STATUS_REQUEST)
    seen = await reader.result()
    reader.release()
    assert seen["result"]["models"]["alpha"]["failure"]["last_lines"] == []
    request = {"jsonrpc": "2.0", "id": 1, "method": "logs", "params": {"model": "alpha"}}
    reader = AsUser(NOBODY, _call, path, request)
    refused = await reader.result()
    reader.release()
    assert refused["error"]["data"]["error"] == "permission_denied"
    audit = [line for line in capsys.readouterr().out.splitlines() if "rpc.refused" in line]
    assert any("method=logs" in line and f"uid={NOBODY}" in line for line in audit)


async def test_shutdown_leaves_another_daemons_socket_alone(server: ServerFactory) -> None:
    """If another daemon bound the path meanwhile, closing does not remove its socket."""
    path, _, _, rpc = await server()
    path.unlink()
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        await rpc.close()
        assert path.is_socket()


async def test_the_socket_appears_with_its_mode_already_set(
    engines: EngineFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket is never reachable under its name before its mode is set."""
    engine, _, _ = await engines(make_config(MODELS, [60]))
    path = tmp_path / "modeld.sock"
    public_when_chmod: list[bool] = []
    chmod = os.chmod

    def watching_chmod(target: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        public_when_chmod.append(path.exists())
        chmod(target, mode, *args, **kwargs)

    monkeypatch.setattr("modeld.daemon.server.os.chmod", watching_chmod)
    rpc = RpcServer(engine, path, 0o600)
    await rpc.start()
    try:
        assert public_when_chmod == [False]
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        await rpc.close()
    assert not path.exists()


async def test_status_shows_backend_text_as_text(engines: EngineFactory) -> None:
    """A backend line like `ERROR [/opt/vllm] boom` is printed, not parsed as markup."""
    engine, runtime, _ = await engines(make_config(MODELS, [60]))
    runtime.behaviour["alpha"] = Behaviour(exit_code=1)
    with pytest.raises(Exception, match="exited"):
        await engine.models.switch("alpha")
    status = engine.view.status().model_dump(mode="json")
    status["models"]["alpha"]["failure"].update(
        reason="exited [/bold]", last_lines=["ERROR [/opt/vllm] boom"]
    )
    out = StringIO()
    render_status(Console(file=out, width=200), Status.model_validate(status))
    assert "ERROR [/opt/vllm] boom" in out.getvalue()
    assert "exited [/bold]" in out.getvalue()
