"""Live events over `subscribe`, and backends' logs over `logs`."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress

from modeld.cli.live import switch_with_progress
from modeld.cli.sentences import describe_step
from modeld.client import Client, RpcError
from modeld.daemon.connection import MAX_FOLLOWS_PER_CONNECTION
from modeld.demo.main import private_copy
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.wire.events import AnyEvent, OtherEvent, Subscription, Waking, read_event
from tests.support import Served, ServeFactory, eventually, make_config

THREE = {"a": {"gpu_memory_gb": 30}, "b": {"gpu_memory_gb": 25}, "c": {"gpu_memory_gb": 30}}


@pytest.fixture
async def served(serve: ServeFactory) -> Served:
    """A daemon over the fake host, on a socket: path, Engine, runtime."""
    return await serve(make_config(THREE, [60]))


async def collect(client: Client, until: int) -> list[AnyEvent]:
    """Events until the `until`-th state change."""
    events: list[AnyEvent] = []
    states = 0
    async for event in client.events():
        events.append(event)
        states += event.type == "state"
        if states == until:
            return events
    return events


async def test_two_subscribers_see_the_same_ordered_story(
    served: tuple[Path, Engine, FakeRuntime],
) -> None:
    """Both subscribers receive the switch's steps in order, while a third subscriber that
    never reads holds up neither them nor the switch."""
    path, engine, _ = served
    await engine.models.switch("a")
    await engine.models.switch("b")
    stalled = await asyncio.open_unix_connection(str(path))
    stalled[1].write(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')  # and never reads
    async with Client(path) as first, Client(path) as second:
        readers = [asyncio.create_task(collect(c, until=4)) for c in (first, second)]

        async def all_subscribed() -> bool:
            return bool(engine.view.status().subscribers == 3)

        await eventually(all_subscribed, timeout=10)
        await engine.models.switch("c")
        one, two = await asyncio.wait_for(asyncio.gather(*readers), 10)
    stalled[1].close()
    assert not [e for e in one if isinstance(e, OtherEvent)]  # each read as its own type
    assert [e.seq for e in one] == [e.seq for e in two]
    assert [e.seq for e in one] == sorted(e.seq for e in one)
    story = [
        (
            e.type,
            getattr(e, "model", None),
            getattr(e, "to_state", None) or getattr(e, "stopped", None),
        )
        for e in one
    ]
    assert story == [
        ("switch.plan", "c", None),
        ("state", "a", "stopping"),
        ("state", "a", "stopped"),
        ("switch.stopped", "c", "a"),
        ("switch.room_ready", "c", None),
        ("state", "c", "loading"),
        ("state", "c", "running"),
    ]


def test_full_queue_drops_the_oldest_and_says_so() -> None:
    """A subscriber that falls behind loses the oldest events, and is told how many."""

    async def scenario() -> list[AnyEvent]:
        subscription = Subscription(limit=3)
        for seq in range(1, 6):
            subscription.offer(Waking(model="a", seq=seq))
        return [await subscription.next() for _ in range(3)]

    events = asyncio.run(scenario())
    assert [e.seq for e in events] == [3, 4, 5]
    assert events[0].dropped_before == 2
    assert events[1].dropped_before is None


async def test_logs_after_a_failed_load(served: tuple[Path, Engine, FakeRuntime]) -> None:
    """`logs` returns the backend's last lines, e.g. after it failed to load."""
    path, _, runtime = served
    runtime.behaviour["a"] = Behaviour(exit_code=3)
    async with Client(path) as client:
        with pytest.raises(RpcError):
            await client.call("switch", model="a")
        logs = await client.call("logs", model="a", lines=5)
        assert logs["lines"] == ["a: CUDA error: out of memory"]
        with pytest.raises(RpcError) as caught:
            await client.call("logs", model="a", lines=0)
        assert caught.value.code == -32602


def test_modelctl_watch_prints_events(tmp_path: Path) -> None:
    """`modelctl watch --json` prints the events of a switch made by someone else."""
    root = Path(__file__).resolve().parents[2]
    socket = tmp_path / "modeld.sock"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modeld",
            "--config",
            str(private_copy(root / "etc/modeld/demo.toml", tmp_path)),
            "--socket",
            str(socket),
        ],
        stderr=subprocess.DEVNULL,
    )
    watcher = None
    try:
        from modeld.testing.ports import wait_listening, wait_until

        wait_listening(socket, alive=lambda: daemon.poll() is None)
        watcher = subprocess.Popen(
            [sys.executable, "-m", "modeld.cli.ctl", "--socket", str(socket), "--json", "watch"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert watcher.stdout is not None

        def subscribed() -> bool:
            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "modeld.cli.ctl",
                    "--socket",
                    str(socket),
                    "--json",
                    "status",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            return bool(json.loads(status.stdout)["subscribers"] == 1)

        wait_until(subscribed, "modelctl watch to subscribe")  # act only once it listens
        subprocess.run(
            [
                sys.executable,
                "-m",
                "modeld.cli.ctl",
                "--socket",
                str(socket),
                "switch",
                "demo-coder",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            [sys.executable, "-m", "modeld.cli.ctl", "--socket", str(socket), "stop", "demo-coder"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        seen = []
        for line in watcher.stdout:
            event = json.loads(line)
            seen.append((event.get("model"), event.get("to_state")))
            if ("demo-coder", "stopped") in seen:
                break
        assert ("demo-coder", "stopping") in seen
    finally:
        if watcher is not None:
            watcher.terminate()
            watcher.wait()
        daemon.terminate()
        daemon.wait()


def test_switch_steps_are_described_from_events() -> None:
    """Each event of a switch to `t` names its step; events about others are ignored."""
    steps: list[tuple[dict[str, Any], str | None]] = [
        (
            {"type": "switch.plan", "model": "t", "stop": ["a"], "park": ["b"]},
            "plan: stop a; park b",
        ),
        ({"type": "switch.plan", "model": "t", "stop": [], "park": []}, "plan: fits as is"),
        ({"type": "state", "model": "a", "to_state": "stopping", "reason": "x"}, "stopping a"),
        ({"type": "state", "model": "b", "to_state": "sleeping", "reason": "x"}, "parking b"),
        ({"type": "switch.parked", "model": "t", "parked": "b"}, "parked b"),
        ({"type": "switch.room_ready", "model": "t", "free_gb": {}}, "memory free"),
        ({"type": "state", "model": "t", "to_state": "loading", "reason": "wake"}, "t: waking"),
        ({"type": "state", "model": "t", "to_state": "loading", "reason": "start"}, "t: loading"),
        ({"type": "state", "model": "t", "to_state": "running", "reason": "ok"}, "t: running"),
        ({"type": "switch.plan", "model": "other", "stop": [], "park": []}, None),
        ({"type": "state", "model": "a", "to_state": "running", "reason": "x"}, None),
    ]
    # The fields each sample leaves out (the step does not depend on them).
    rest: dict[str, dict[str, Any]] = {
        "state": {"from_state": "stopped"},
        "switch.plan": {
            "memory_info": {"required_gb": None, "available_before_gb": None, "freed_gb": 0},
            "policy": "lru",
        },
    }
    for event, expected in steps:
        typed = read_event(rest.get(event["type"], {}) | event)
        assert not isinstance(typed, OtherEvent), event
        assert describe_step(typed, "t") == expected, event


async def test_switch_progress_follows_the_switch_through_events(
    serve: ServeFactory,
) -> None:
    """modelctl's progress bar is driven by pushed events: it shows each step of a real
    switch (the park, the load) and returns the switch's own answer."""
    models = {
        "a": {"gpu_memory_gb": 50, "size_gb": 40, "sleep_mode": True},
        "b": {"gpu_memory_gb": 50, "load_time_seconds": 1},
    }
    path, engine, runtime = await serve(make_config(models, [80], park_ram_gb=100))
    runtime.behaviour["b"] = Behaviour(load_seconds=0.5)
    await engine.models.switch("a")
    shown: list[str] = []
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    update = Progress.update

    def record(progress: Progress, task: Any, **fields: Any) -> None:
        if fields.get("description"):
            shown.append(fields["description"])
        update(progress, task, **fields)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Progress, "update", record)
        result = await switch_with_progress(console, path, "switch", "b", {"wait": True})
    assert result["state"] == "running"
    assert result["parked_models"] == ["a"]
    assert shown[:2] == ["plan: park a", "parking a"]
    assert "b: loading" in shown


async def test_logs_follow_over_the_socket(serve: ServeFactory) -> None:
    """`logs` with `follow` pushes the backend's lines until it ends; unknown models are
    refused; one connection follows at most MAX_FOLLOWS_PER_CONNECTION models."""
    names = {f"m{i}": {"gpu_memory_gb": 1} for i in range(MAX_FOLLOWS_PER_CONNECTION + 1)}
    path, engine, _ = await serve(make_config(names, [60]))
    for name in names:
        await engine.models.start(name)
    async with Client(path) as client:
        with pytest.raises(RpcError) as caught:
            await anext(client.follow("nope"))
        assert caught.value.data["error"] == "unknown_model"
        followed = [client.follow(name) for name in list(names)[:-1]]
        for name, lines in zip(names, followed, strict=False):
            assert await anext(lines) == f"{name}: CUDA error: out of memory"
        with pytest.raises(RpcError) as caught:
            await anext(client.follow(list(names)[-1]))
        assert caught.value.data == {"error": "limit_reached", "limit": 8}
        await engine.models.stop("m0")
        assert [line async for line in followed[0]] == []  # ended with its backend
    async with Client(path) as other:  # the limit is per connection
        assert await anext(other.follow(list(names)[-1])) == "m8: CUDA error: out of memory"


def test_modelctl_watch_says_so_and_reconnects_when_the_daemon_restarts(tmp_path: Path) -> None:
    """The daemon restarts under `modelctl watch`: it says it lost modeld, says when it
    answers again, and goes on printing events (in sentences) from the new daemon."""
    from modeld.testing.ports import wait_listening, wait_until

    root = Path(__file__).resolve().parents[2]
    socket = tmp_path / "modeld.sock"
    config = private_copy(root / "etc/modeld/demo.toml", tmp_path)
    ctl = [sys.executable, "-m", "modeld.cli.ctl", "--socket", str(socket)]

    def start_daemon() -> subprocess.Popen[bytes]:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "modeld", "--config", str(config), "--socket", str(socket)],
            stderr=subprocess.DEVNULL,
        )
        wait_listening(socket, alive=lambda: daemon.poll() is None)
        return daemon

    def subscribed() -> bool:
        status = subprocess.run(
            [*ctl, "--json", "status"], capture_output=True, text=True, check=True, timeout=60
        )
        return bool(json.loads(status.stdout)["subscribers"] == 1)

    daemon = start_daemon()
    watcher = subprocess.Popen(
        [*ctl, "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert watcher.stdout is not None and watcher.stderr is not None
    try:
        wait_until(subscribed, "modelctl watch to subscribe")
        daemon.terminate()
        daemon.wait(timeout=60)
        assert "lost modeld" in watcher.stderr.readline()
        daemon = start_daemon()
        assert "answers again" in watcher.stderr.readline()
        wait_until(subscribed, "modelctl watch to subscribe again")
        subprocess.run([*ctl, "switch", "demo-coder"], check=True, capture_output=True, timeout=60)
        for line in watcher.stdout:
            assert "{" not in line, line  # sentences, not JSON
            if "demo-coder" in line and "running" in line:
                break
    finally:
        watcher.terminate()
        watcher.wait()
        daemon.terminate()
        daemon.wait()
