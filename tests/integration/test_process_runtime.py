"""The process runtime with real child processes (the fake vLLM server)."""

from __future__ import annotations

import asyncio
import sys

from modeld.gpu.base import pid_alive
from modeld.runtime.base import BackendState
from modeld.runtime.process import ProcessRuntime
from modeld.testing.ports import free_port
from modeld.vllm import Health, VllmClient
from tests.support import eventually, has_output, process_model

PARENT_AND_CHILD = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print('child', child.pid, flush=True); time.sleep(60)"
)


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
