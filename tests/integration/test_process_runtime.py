"""The process runtime with real child processes (the fake vLLM server)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from modeld.adapters.gpu.base import pid_alive
from modeld.adapters.runtime.base import BackendState
from modeld.adapters.runtime.process import Follower, ProcessRuntime
from modeld.adapters.vllm import Health, VllmClient
from modeld.core.config import ModelConfig
from modeld.core.errors import LoadFailed
from modeld.engine.readiness import await_ready
from modeld.testing.ports import free_port
from tests.support import eventually, has_output, process_model

# A backend with a child of its own; the sleeps are their lifetimes (the test stops them
# long before), not waits of the test.
PARENT_AND_CHILD = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print('child', child.pid, flush=True); time.sleep(60)"
)


async def started(runtime: ProcessRuntime, probe: VllmClient, model: ModelConfig) -> None:
    """Start `model`'s backend and wait until its /health answers 200."""
    await runtime.start(model)

    async def healthy() -> bool:
        return await probe.health(model.endpoint) is Health.HEALTHY

    await eventually(healthy)


async def test_fake_vllm_child_serves_health_then_stops() -> None:
    """modeld-fake-vllm keeps its port closed while loading, then answers; stop ends it."""
    port = free_port()
    model = process_model(
        ["modeld-fake-vllm", "--model", "m", "--port", str(port), "--load-seconds", "0.3"], port
    )
    runtime, probe = ProcessRuntime(), VllmClient(timeout_s=1)
    try:
        started = await runtime.start(model)
        assert started.state is BackendState.RUNNING
        assert await probe.health(model.endpoint) is Health.UNREACHABLE

        async def healthy() -> bool:
            return await probe.health(model.endpoint) is Health.HEALTHY

        await eventually(healthy)
        await runtime.stop(model)
        assert (await runtime.inspect(model)).state is BackendState.EXITED
        assert await probe.health(model.endpoint) is Health.UNREACHABLE
        await runtime.stop(model)  # idempotent
    finally:
        await runtime.close()
        await probe.close()


async def test_the_process_fake_dies_on_a_long_prompt_as_vllm_has() -> None:
    """modeld-fake-vllm --die-over-tokens: a short prompt is answered, a longer one
    drops its connection and the backend exits 1, saying why (vLLM issue 52871), as a
    crash loop's test needs of a real process."""
    port = free_port()
    command = ["modeld-fake-vllm", "--model", "m", "--port", str(port), "--load-seconds", "0"]
    model = process_model([*command, "--die-over-tokens", "50"], port)
    runtime, probe = ProcessRuntime(), VllmClient(timeout_s=1)
    try:
        await started(runtime, probe, model)
        url = f"{model.endpoint}/v1/completions"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"model": "m", "prompt": "short"}) as answer:
                assert answer.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with http.post(url, json={"model": "m", "prompt": "w " * 60}) as answer:
                    await answer.read()
        ended = await asyncio.wait_for(runtime.wait_exit(model), 10)
        assert ended.exit_code == 1
        assert any("engine core died" in line for line in await runtime.logs(model))
    finally:
        await runtime.close()
        await probe.close()


async def test_a_backend_key_reaches_the_backend_and_a_missing_file_fails_the_load(
    tmp_path: Path,
) -> None:
    """`api_key_file`: the launched backend gets the key as VLLM_API_KEY and asks for it
    on /v1; a key file that cannot be read fails the load, saying so, before any start."""
    port = free_port()
    key_file = tmp_path / "key"
    key_file.write_text("backend-secret-1\n")
    command = ["modeld-fake-vllm", "--model", "m", "--port", str(port), "--load-seconds", "0"]
    model = process_model(command, port, api_key_file=str(key_file))
    runtime, probe = ProcessRuntime(), VllmClient(timeout_s=1)
    try:
        await started(runtime, probe, model)
        async with aiohttp.ClientSession() as http:
            url = model.endpoint + "/v1/models"
            async with http.get(url) as bare:
                assert bare.status == 401
            keyed = {"Authorization": "Bearer backend-secret-1"}
            async with http.get(url, headers=keyed) as answer:
                assert answer.status == 200
        await runtime.stop(model)
        missing = process_model(command, port, api_key_file=str(tmp_path / "absent"))
        with pytest.raises(LoadFailed, match="api_key_file: cannot read"):
            await runtime.start(missing)
        assert await probe.health(model.endpoint) is Health.UNREACHABLE
    finally:
        await runtime.close()
        await probe.close()


async def test_stop_kills_the_whole_process_group() -> None:
    """A backend's own children (vLLM's engine and workers) die with it."""
    model = process_model([sys.executable, "-c", PARENT_AND_CHILD], stop_timeout_s=2)
    runtime = ProcessRuntime()
    try:
        await runtime.start(model)
        await eventually(lambda: has_output(runtime, model))
        child = int((await runtime.logs(model))[0].split()[1])
        assert pid_alive(child)
        await runtime.stop(model)
        await eventually(lambda: asyncio.sleep(0, result=not pid_alive(child)), timeout=5)
    finally:
        await runtime.close()


async def test_exit_code_and_output_are_kept() -> None:
    """wait_exit returns the exit code; logs keep the last lines."""
    model = process_model([sys.executable, "-c", "print('loading'); print('boom'); exit(3)"])
    runtime = ProcessRuntime()
    try:
        await runtime.start(model)
        exited = await runtime.wait_exit(model)
        assert exited.exit_code == 3
        assert await runtime.logs(model) == ["loading", "boom"]
    finally:
        await runtime.close()


async def test_sigterm_ignoring_backend_is_killed() -> None:
    """A backend that ignores SIGTERM is SIGKILLed after stop_timeout_s (exit 128+9)."""
    ignore = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    model = process_model([sys.executable, "-c", ignore], stop_timeout_s=0.3)
    runtime = ProcessRuntime()
    try:
        await runtime.start(model)
        await eventually(lambda: has_output(runtime, model))
        await runtime.stop(model)
        assert (await runtime.inspect(model)).exit_code == 128 + 9
    finally:
        await runtime.close()


def _waits_for(fifo: Path, before: str, after: str) -> str:
    """A backend script: print `before`, block until `fifo` is opened for writing and
    closed (the test's go), then print `after`."""
    os.mkfifo(fifo)
    return (
        f"print({before!r}, flush=True)\nopen({str(fifo)!r}).read()\nprint({after}, flush=True)\n"
    )


async def _go(fifo: Path) -> None:
    """Let a `_waits_for` backend go on (off the loop: the open waits for its reader)."""
    await asyncio.to_thread(lambda: open(fifo, "w").close())


async def _followed(
    runtime: ProcessRuntime, model: ModelConfig, lines: int, first: str
) -> AsyncIterator[str]:
    """Start `model`, follow its output, having checked the first line followed."""
    await runtime.start(model)
    await eventually(lambda: has_output(runtime, model))
    followed = runtime.follow(model, lines=lines)
    assert await asyncio.wait_for(anext(followed), 10) == first
    return followed


async def test_follow_gives_the_tail_then_new_lines_until_the_backend_ends(
    tmp_path: Path,
) -> None:
    """`logs -f` underneath: the lines printed so far, then each new one as it comes, and
    the end when the backend exits."""
    flag = tmp_path / "go"
    model = process_model([sys.executable, "-c", _waits_for(flag, "one", "'two'")])
    runtime = ProcessRuntime()
    try:
        lines = await _followed(runtime, model, 10, "one")
        await _go(flag)
        assert await asyncio.wait_for(anext(lines), 10) == "two"
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(lines), 10)
    finally:
        await runtime.close()


async def test_a_follower_that_falls_behind_loses_the_oldest_lines_and_is_told(
    tmp_path: Path,
) -> None:
    """A reader that does not keep up never holds the backend up: the oldest lines go,
    and it is told how many before the ones it still gets."""
    flag = tmp_path / "go"
    burst = "'\\n'.join(str(i) for i in range(3000))"
    model = process_model([sys.executable, "-c", _waits_for(flag, "ready", burst)])
    runtime = ProcessRuntime()
    try:
        lines = await _followed(runtime, model, 1, "ready")
        await _go(flag)
        assert (await runtime.wait_exit(model)).exit_code == 0  # the whole burst was printed
        rest = [line async for line in lines]
    finally:
        await runtime.close()
    assert rest[0].startswith(f"… [{3000 - Follower.LIMIT} lines dropped")
    assert rest[1:] == [str(i) for i in range(3000 - Follower.LIMIT, 3000)]


async def test_follow_of_a_model_never_started_ends_at_once() -> None:
    """Following a model without a backend gives nothing and ends (no hang)."""
    runtime = ProcessRuntime()
    assert [line async for line in runtime.follow(process_model(["true"]))] == []


async def test_a_load_that_stops_moving_fails_stalled_long_before_its_cap() -> None:
    """A backend that prints nothing more and never answers fails `stalled` once
    load_stall_timeout_s passes (its last lines attached), not at load_timeout_s; one
    that keeps printing progress loads, however long past the stall deadline it takes."""
    runtime, probe = ProcessRuntime(), VllmClient(timeout_s=1)
    try:
        port = free_port()
        stuck = process_model(
            ["modeld-fake-vllm", "--model", "m", "--port", str(port), "--load-seconds", "60"],
            port,
            load_stall_timeout_s=1.0,
            load_timeout_s=60,
        )
        await runtime.start(stuck)
        started = asyncio.get_running_loop().time()
        with pytest.raises(LoadFailed) as caught:
            await await_ready(stuck, runtime, probe, 0.05, lambda _: None)
        assert asyncio.get_running_loop().time() - started < 10
        assert caught.value.data["reason"] == "stalled"
        assert any("loading m" in line for line in caught.value.data["last_lines"])
        await runtime.stop(stuck)

        port = free_port()
        progressing = ["--load-seconds", "2.5", "--progress-seconds", "0.3"]
        moving = process_model(
            ["modeld-fake-vllm", "--model", "m", "--port", str(port), *progressing],
            port,
            load_stall_timeout_s=1.0,
            load_timeout_s=60,
        )
        await runtime.start(moving)
        await await_ready(moving, runtime, probe, 0.05, lambda _: None)
        assert await probe.health(moving.endpoint) is Health.HEALTHY
        await runtime.stop(moving)
    finally:
        await runtime.close()
        await probe.close()


async def test_the_second_cold_start_reuses_the_kept_vllm_cache(tmp_path: Path) -> None:
    """Each start gets VLLM_CACHE_ROOT in the model's own kept directory (made if
    missing): the fake compiles on the first start and finds its artifacts on the next
    (how much faster that start is, with real vLLM, is a bench figure)."""
    runtime, probe = ProcessRuntime(), VllmClient(timeout_s=1)
    cache = tmp_path / "cache" / "vllm" / "m"
    port = free_port()
    compiling = ["--load-seconds", "0.2", "--compile-seconds", "2"]
    model = process_model(
        ["modeld-fake-vllm", "--model", "m", "--port", str(port), *compiling],
        port,
        vllm_cache_dir=str(cache),
    )
    said = []
    try:
        for _ in range(2):
            await runtime.start(model)
            await await_ready(model, runtime, probe, 0.05, lambda _: None)
            await runtime.stop(model)
            said.append(await runtime.logs(model))
    finally:
        await runtime.close()
        await probe.close()
    assert (cache / "torch_compile_cache" / "fake-vllm").exists()
    assert any("compiling" in line for line in said[0])
    assert not any("compiling" in line for line in said[1])
    assert any("compile cache hit" in line for line in said[1])


def test_a_reinstall_under_a_running_daemon_does_not_fail_the_next_start(tmp_path: Path) -> None:
    """The package as installed (a copy of it), its runtime imported as a running daemon
    has it; then its files go (pip removes them while it reinstalls): the next backend
    start still runs under its reaper (before, "can't open file .../reaper.py")."""
    import shutil
    import subprocess

    installed = tmp_path / "site-packages"
    shutil.copytree(Path(__file__).resolve().parents[2] / "modeld", installed / "modeld")
    script = f"""
import asyncio, shutil, sys
sys.path.insert(0, {str(installed)!r})
from modeld.adapters.runtime.process import ProcessRuntime
from tests.support import process_model
shutil.rmtree({str(installed / "modeld")!r})  # a reinstall under way

async def main():
    model = process_model([sys.executable, "-c", "print('started'); exit(7)"])
    runtime = ProcessRuntime()
    try:
        await runtime.start(model)
        exited = await runtime.wait_exit(model)
        print(exited.exit_code, await runtime.logs(model))
    finally:
        await runtime.close()

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "7 ['started']", done.stdout + done.stderr
