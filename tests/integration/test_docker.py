"""Integration with a real Docker engine: modeld drives real containers through aiodocker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.docker import DockerRuntime
from modeld.adapters.vllm import VllmClient
from modeld.client import Client, DaemonUnreachable, RpcError
from modeld.core.config import Config
from modeld.core.errors import NameCollision
from modeld.core.states import State
from modeld.daemon.run import Daemon
from modeld.engine.build import build_engine
from modeld.engine.engine import Engine
from modeld.testing.ports import free_port
from tests.support import (
    SEED_GPU_FIELDS,
    SEED_MODEL_FIELDS,
    docker_config,
    eventually,
    state_of,
    wait_for_state,
)
from tests.support.docker_image import docker_cli, docker_model
from tests.support.engine_proxy import EngineProxy

pytestmark = pytest.mark.docker


DaemonFactory = Callable[..., Awaitable[tuple[Engine, Path]]]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Start Daemons over the real Docker engine (a simulated GPU); yield a starter."""
    running: list[Daemon] = []

    async def start(config: Config, runtime: DockerRuntime | None = None) -> tuple[Engine, Path]:
        engine = await build_engine(
            config,
            gpu=SimulatedGpu(config.gpu),
            runtimes={"docker": runtime or DockerRuntime()},
            vllm=VllmClient(timeout_s=1),
        )
        path = tmp_path / f"modeld-{len(running)}.sock"
        started = Daemon(config, engine=engine, socket_path=path)
        running.append(started)
        await started.startup()
        return engine, path

    yield start
    for started in running:
        await started.shutdown()


def container_state(name: str) -> str:
    """What Docker itself says about a container."""
    return docker_cli("inspect", "--format", "{{.State.Status}}", name).stdout.strip()


async def health(endpoint: str) -> int:
    """GET /health on a backend, as a vLLM client would."""
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/health") as r:
        return r.status


async def test_switch_three_models_where_two_fit(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """Switch A, B, C on a GPU holding two: A's container is stopped, C runs and answers."""
    tables = {
        "a": docker_model(image, prefix, "a", 30),
        "b": docker_model(image, prefix, "b", 25),
        "c": docker_model(image, prefix, "c", 30),
    }
    _, path = await daemon(docker_config(tables, [60]))
    async with Client(path) as client:
        assert (await client.call("switch", model="a"))["state"] == "running"
        assert (await client.call("switch", model="b"))["state"] == "running"
        result = await client.call("switch", model="c")
        # Healthy before switch returned: the port answers right now.
        assert await health(tables["c"]["endpoint"]) == 200
        assert result["status"] == "success"
        assert result["unloaded_models"] == ["a"]
        assert container_state(f"{prefix}-a") == "exited"
        assert container_state(f"{prefix}-b") == "running"
        assert container_state(f"{prefix}-c") == "running"
        labels = docker_cli(
            "inspect", "--format", '{{index .Config.Labels "modeld.model"}}', f"{prefix}-c"
        ).stdout.strip()
        assert labels == "c"
        status = await client.call("status")
        for name, expected in (("a", "stopped"), ("b", "running"), ("c", "running")):
            view = status["models"][name]
            assert view["status"] == expected
            assert view.keys() >= SEED_MODEL_FIELDS
        assert status["gpu"].keys() >= SEED_GPU_FIELDS
        assert status["gpu"]["used_gb"] == 55.0


async def test_container_exiting_during_load_fails(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """A container that exits while loading is `failed` with its exit code and log lines."""
    tables = {"bad": docker_model(image, prefix, "bad", 10, "3")}
    _, path = await daemon(docker_config(tables, [60]))
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="bad")
        assert caught.value.code == -32003
        assert caught.value.data["exit_code"] == 3
        assert any("CUDA error" in line for line in caught.value.data["last_lines"])
        view = (await client.call("status"))["models"]["bad"]
        assert view["status"] == "failed"
        assert view["failure"]["exit_code"] == 3


async def test_docker_stop_behind_back_is_noticed(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """`docker stop` by hand turns a running model `failed`, noticed by the monitor."""
    tables = {"a": docker_model(image, prefix, "a", 10)}
    engine, _ = await daemon(docker_config(tables, [60]))
    await engine.models.switch("a")
    await asyncio.to_thread(docker_cli, "stop", f"{prefix}-a")
    assert await wait_for_state(engine, "a", {State.FAILED}, 15) is State.FAILED
    failure = engine.view.status().models["a"].failure
    assert failure is not None
    assert "without modeld asking" in failure.reason
    assert failure.exit_code == 0
    assert failure.last_lines[-1] == "fake-vllm: SIGTERM, shutting down"


async def test_existing_container_is_started_and_stopped(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """A compose-style container that exists by name is started and stopped, not recreated."""
    port = free_port()
    name = f"{prefix}-existing"
    created = docker_cli(
        "create", "--name", name, "--network", "host", image, "/fake-vllm", str(port), "0.3"
    ).stdout.strip()
    tables = {
        "existing": {
            "runtime": "docker",
            "probe": "health",  # the image answers /health, not tokens
            "container": name,
            "endpoint": f"http://127.0.0.1:{port}",
            "gpu_memory_gb": 10,
            "stop_timeout_s": 5,
        }
    }
    engine, _ = await daemon(docker_config(tables, [60]))
    await engine.models.switch("existing")
    assert container_state(name) == "running"
    assert docker_cli("inspect", "--format", "{{.Id}}", name).stdout.strip() == created
    await engine.models.stop("existing")
    assert container_state(name) == "exited"


async def test_missing_container_fails_with_docker_message(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """A model naming a container that does not exist fails its load with a clear reason."""
    tables = {
        "ghost": {
            "runtime": "docker",
            "probe": "health",  # the image answers /health, not tokens
            "container": f"{prefix}-ghost",
            "endpoint": f"http://127.0.0.1:{free_port()}",
            "gpu_memory_gb": 10,
        }
    }
    _, path = await daemon(docker_config(tables, [60]))
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="ghost")
        assert caught.value.code == -32003
        assert "does not exist" in caught.value.message


async def test_running_container_is_adopted_not_restarted(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """A healthy container found at startup becomes `running` with the same start time."""
    tables = {"a": docker_model(image, prefix, "a", 10)}
    config = docker_config(tables, [60])
    first, _ = await daemon(config)
    await first.models.switch("a")
    started = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-a").stdout
    second, _ = await daemon(config)
    assert await wait_for_state(second, "a", {State.RUNNING}, 15) is State.RUNNING
    after = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-a").stdout
    assert after == started


async def test_a_strangers_container_with_the_name_is_never_touched(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """A container with the model's name that modeld did not make (no modeld.model label)
    is not adopted at startup, not removed, not stopped: switch says name_collision."""
    tables = {"a": docker_model(image, prefix, "a", 10)}
    port = tables["a"]["endpoint"].rsplit(":", 1)[1]
    name = f"{prefix}-a"
    docker_cli("run", "-d", "--network", "host", "--name", name, image, "/fake-vllm", port, "0")
    started = docker_cli("inspect", "--format", "{{.State.StartedAt}}", name).stdout
    engine, _ = await daemon(docker_config(tables, [60]))
    assert state_of(engine, "a") is State.STOPPED
    with pytest.raises(NameCollision, match="did not make") as caught:
        await engine.models.switch("a")
    assert caught.value.data["container"] == name
    assert container_state(name) == "running"
    assert docker_cli("inspect", "--format", "{{.State.StartedAt}}", name).stdout == started
    docker_cli("stop", "-t", "1", name)
    with pytest.raises(NameCollision):
        await engine.models.switch("a")
    assert container_state(name) == "exited"  # a stopped stranger is not force-removed


async def test_engine_unreachable_is_a_clear_error(tmp_path: Path, daemon: DaemonFactory) -> None:
    """With no engine on the socket, status answers and switch gets runtime_unavailable."""
    tables = {
        "a": {
            "runtime": "docker",
            "probe": "health",  # the image answers /health, not tokens
            "container": "whatever",
            "endpoint": "http://127.0.0.1:1",
            "gpu_memory_gb": 10,
        }
    }
    runtime = DockerRuntime(url=f"unix://{tmp_path}/no-docker.sock")
    _, path = await daemon(docker_config(tables, [60]), runtime)
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="a")
        assert caught.value.code == -32005
        status = await client.call("status")
        assert status["runtimes"]["docker"]["available"] is False
        assert status["models"]["a"]["status"] == "stopped"


async def test_loading_container_is_adopted_and_watched(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """A container still loading when modeld starts is `loading`, then `running`, unrestarted."""
    tables = {"slow": docker_model(image, prefix, "slow", 10, load_seconds=2)}
    config = docker_config(tables, [60])
    first, _ = await daemon(config)
    await first.models.switch("slow", wait=False)
    await first.shutdown()  # the daemon goes away; the container keeps loading
    started = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-slow").stdout
    second, _ = await daemon(config)
    assert state_of(second, "slow") is State.LOADING
    assert await wait_for_state(second, "slow", {State.RUNNING}, 20) is State.RUNNING
    after = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-slow").stdout
    assert after == started


def toml_value(value: Any) -> str:
    """A value in TOML: JSON's strings, numbers, booleans and arrays are TOML too; tables not."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_config(path: Path, socket: Path, tables: dict[str, dict[str, Any]], gb: float) -> None:
    """A TOML config for a daemon run as its own process."""
    lines = [
        "[daemon]",
        f'socket = "{socket}"',
        f'state_dir = "{path.parent / "state"}"',
        'eviction_policy = "largest_first"',
        "poll_interval_s = 0.2",
        "health_poll_interval_s = 0.05",
        "memory_poll_interval_s = 0.02",
        "[gpu]",
        'backend = "simulated"',
        f"devices_gb = [{gb}]",
        "release_delay_s = 0.2",
    ]
    for name, table in tables.items():
        lines.append(f'[models."{name}"]')
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")


def spawn_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`modeld --config` as its own process."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "modeld", "--config", str(config)], stderr=handle
        )


async def answering(socket: Path) -> bool:
    """Whether a daemon answers ping on `socket`."""
    try:
        async with Client(socket) as client:
            return bool((await client.call("ping"))["pong"])
    except DaemonUnreachable:
        return False


async def test_kill_9_mid_switch_then_restart(image: str, prefix: str, tmp_path: Path) -> None:
    """modeld killed during a switch's load, restarted: no duplicates, states match Docker,
    memory within capacity."""
    tables = {
        "a": docker_model(image, prefix, "a", 30),
        "b": docker_model(image, prefix, "b", 25),
        "c": docker_model(image, prefix, "c", 30, load_seconds=3),
    }
    socket, config = tmp_path / "modeld.sock", tmp_path / "modeld.toml"
    write_config(config, socket, tables, 60)
    daemon = spawn_daemon(config, tmp_path / "modeld.log")
    try:
        await eventually(lambda: answering(socket))
        async with Client(socket) as client:
            await client.call("switch", model="a")
            await client.call("switch", model="b")
            await client.call("switch", model="c", wait=False)
        daemon.kill()  # SIGKILL while c loads, after a was stopped for it
        daemon.wait()
        daemon = spawn_daemon(config, tmp_path / "modeld.log")
        await eventually(lambda: answering(socket))
        async with Client(socket) as client:

            async def settled() -> bool:
                status = await client.call("status")
                return all(m["status"] != "loading" for m in status["models"].values())

            await eventually(settled)
            status = await client.call("status")
    finally:
        daemon.kill()
        daemon.wait()
    for name in tables:
        ids = docker_cli(
            "ps", "-aq", "--filter", f"label=modeld.model={name}", "--filter", f"name={prefix}"
        ).stdout.split()
        assert len(ids) == 1, f"{name}: {len(ids)} containers"
        docker_state = container_state(f"{prefix}-{name}")
        expected = "running" if docker_state == "running" else "stopped"
        assert status["models"][name]["status"] == expected, (name, docker_state)
    assert [status["models"][n]["status"] for n in "abc"] == ["stopped", "running", "running"]
    assert status["gpu"]["used_gb"] <= status["gpu"]["total_gb"]


async def test_missing_image_fails_with_dockers_message(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """An image that is not there (nothing can be pulled): `failed` with Docker's words."""
    table = docker_model(image, prefix, "ghost", 10)
    table["image"] = "modeld-test/no-such-image:1"
    _, path = await daemon(docker_config({"ghost": table}, [60]))
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="ghost")
        assert caught.value.code == -32003
        assert "No such image" in caught.value.message
        view = (await client.call("status"))["models"]["ghost"]
        assert view["status"] == "failed"
        assert "No such image" in view["failure"]["reason"]


async def test_engine_down_and_back(
    image: str, prefix: str, daemon: DaemonFactory, tmp_path: Path
) -> None:
    """Engine gone mid-switch: status answers, changes are refused without busy-looping;
    back: modeld reconnects and re-reads what happened meanwhile."""
    proxy = EngineProxy(tmp_path / "engine.sock")
    await proxy.start()
    try:
        tables = {
            "a": docker_model(image, prefix, "a", 10),
            "b": docker_model(image, prefix, "b", 10),
            "c": docker_model(image, prefix, "c", 10, load_seconds=2),
        }
        engine, path = await daemon(docker_config(tables, [60]), DockerRuntime(proxy.url))
        await engine.models.switch("a")
        async with Client(path) as client:
            switching = asyncio.create_task(client.call("switch", model="c"))

            async def c_container_runs() -> bool:
                result = await asyncio.to_thread(
                    docker_cli,
                    "inspect",
                    "--format",
                    "{{.State.Running}}",
                    f"{prefix}-c",
                    check=False,
                )
                return result.stdout.strip() == "true"

            await eventually(c_container_runs)
            proxy.cut()  # the engine "restarts" in the middle of c's load
            with pytest.raises(RpcError) as caught:
                await switching
            assert caught.value.code == -32005
            refused_before = proxy.refused
            await asyncio.sleep(1.0)  # five monitor periods of an engine that is down
            assert proxy.refused - refused_before <= 2 * 5 * len(tables)
            status = await client.call("status")
            assert status["runtimes"]["docker"]["available"] is False
            with pytest.raises(RpcError) as refused:
                await client.call("switch", model="b")
            assert refused.value.code == -32005
            assert (await client.call("status"))["models"]["b"]["status"] == "stopped"
            # Meanwhile, behind modeld's back, a is stopped.
            await asyncio.to_thread(docker_cli, "stop", f"{prefix}-a")
            proxy.restore()
            assert await wait_for_state(engine, "a", {State.FAILED}, 15) is State.FAILED
            assert await wait_for_state(engine, "c", {State.RUNNING}, 15) is State.RUNNING
            assert (await client.call("status"))["runtimes"]["docker"]["available"] is True
            assert (await client.call("switch", model="b"))["state"] == "running"
    finally:
        await proxy.close()


async def test_never_healthy_container_is_stopped_at_timeout(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """A container that never answers is `failed` after load_timeout_s and stopped."""
    table = docker_model(image, prefix, "stuck", 10, load_seconds=600)
    table["load_timeout_s"] = 1
    _, path = await daemon(docker_config({"stuck": table}, [60]))
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="stuck")
        assert caught.value.code == -32004
        assert (await client.call("status"))["models"]["stuck"]["status"] == "failed"
    assert container_state(f"{prefix}-stuck") == "exited"


async def test_failed_switch_restores_stopped_containers(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """c exits while loading after a was stopped for it: a's container runs again."""
    tables = {
        "a": docker_model(image, prefix, "a", 30),
        "b": docker_model(image, prefix, "b", 25),
        "c": docker_model(image, prefix, "c", 30, "4"),
    }
    _, path = await daemon(docker_config(tables, [60]))
    async with Client(path) as client:
        await client.call("switch", model="a")
        await client.call("switch", model="b")
        with pytest.raises(RpcError) as caught:
            await client.call("switch", model="c")
        assert caught.value.data["exit_code"] == 4
        assert caught.value.data["restored"] == ["a"]
        status = await client.call("status")
    assert [status["models"][n]["status"] for n in "abc"] == ["running", "running", "failed"]
    assert [container_state(f"{prefix}-{n}") for n in "abc"] == ["running", "running", "exited"]


async def test_sigterm_leaves_containers_running(image: str, prefix: str, tmp_path: Path) -> None:
    """SIGTERM: modeld exits 0 and removes its socket; the model's container keeps running."""
    tables = {"a": docker_model(image, prefix, "a", 10)}
    socket, config = tmp_path / "modeld.sock", tmp_path / "modeld.toml"
    write_config(config, socket, tables, 60)
    daemon = spawn_daemon(config, tmp_path / "modeld.log")
    try:
        await eventually(lambda: answering(socket))
        async with Client(socket) as client:
            assert (await client.call("switch", model="a"))["state"] == "running"
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0
    finally:
        daemon.kill()
        daemon.wait()
    assert not socket.exists()
    assert container_state(f"{prefix}-a") == "running"
    assert await health(tables["a"]["endpoint"]) == 200


async def test_parked_container_outlives_the_daemon_and_wakes_in_place(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """Sleep mode with real containers: a is parked (its container runs on, asleep), a
    new daemon adopts it as sleeping, and switching back wakes the same container."""
    tables = {
        name: {**docker_model(image, prefix, name, 50), "sleep_mode": True} for name in ("a", "b")
    }
    config = docker_config(tables, [80], park_ram_gb=100)
    first, _ = await daemon(config)
    await first.models.switch("a")
    started = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-a").stdout
    result = await first.models.switch("b")
    assert result.parked_models == ["a"]
    assert state_of(first, "a") is State.SLEEPING
    assert "fake-vllm: asleep" in docker_cli("logs", f"{prefix}-a").stderr
    await first.shutdown()

    second, _ = await daemon(config)
    assert await wait_for_state(second, "a", {State.SLEEPING}, 15) is State.SLEEPING
    assert await wait_for_state(second, "b", {State.RUNNING}, 15) is State.RUNNING
    back = await second.models.switch("a")
    assert back.woke is True
    assert back.parked_models == ["b"]
    after = docker_cli("inspect", "--format", "{{.State.StartedAt}}", f"{prefix}-a").stdout
    assert after == started  # woken in place, never restarted


async def test_follow_a_containers_log_until_it_stops(
    image: str, prefix: str, daemon: DaemonFactory
) -> None:
    """`logs -f` with Docker: the container's last lines, then its end when it stops."""
    tables = {"a": docker_model(image, prefix, "a", 10)}
    engine, _ = await daemon(docker_config(tables, [60]))
    await engine.models.switch("a")
    lines = engine.models.follow_logs("a", 10)
    seen = []
    async for line in lines:  # (the test's timeout bounds it, should the line not come)
        seen.append(line)
        if "fake-vllm: serving" in line:
            break
    await engine.models.stop("a")
    seen += await asyncio.wait_for(_rest(lines), 30)  # the engine ends the stream
    assert any("fake-vllm: loading" in line for line in seen)
    assert "fake-vllm: SIGTERM, shutting down" in seen


async def _rest(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


async def test_a_container_sees_only_its_own_socket(
    image: str, prefix: str, daemon: DaemonFactory, tmp_path: Path
) -> None:
    """Two containers whose backends bind Unix sockets in one folder: each sees, in that
    folder, only a directory of its own (never the other's socket), and what it binds at
    its socket's path is what the host reaches at that path."""
    folder = tmp_path / "backends"
    tables = {}
    for name in ("a", "b"):
        table = docker_model(image, prefix, name, 10)
        table["endpoint"] = f"unix:{folder / name}.sock"
        # Stands in for vLLM's --uds: makes its socket's file, then lists what it sees.
        table["command"] = [
            "/bin/sh",
            "-c",
            f"touch {folder}/{name}.sock; ls -A {folder} > {folder}/seen; sleep 60",
        ]
        tables[name] = table
    engine, _ = await daemon(docker_config(tables, [40]))
    for name in tables:
        await engine.models.start(name, wait=False)

    async def listed() -> bool:
        return all((folder / f".{name}.sock.d" / "seen").exists() for name in tables)

    await eventually(listed)
    for name, other in (("a", "b"), ("b", "a")):
        seen = (folder / f".{name}.sock.d" / "seen").read_text().split()
        assert seen == [f"{name}.sock", "seen"], seen
        assert not any(other in entry for entry in seen)
        assert (folder / f"{name}.sock").resolve() == folder / f".{name}.sock.d" / f"{name}.sock"
        assert (folder / f"{name}.sock").exists()
