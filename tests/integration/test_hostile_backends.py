"""Backends that misbehave (huge lines, escaping children, reused PIDs) cannot stall,
trick or outlive the process runtime, and get only what they are given."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modeld.adapters.gpu.base import pid_alive
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.base import MAX_LINE_CHARS
from modeld.adapters.runtime.process import ProcessRuntime, resolve_command
from modeld.adapters.vllm import VllmClient
from modeld.core.config import ModelConfig
from modeld.core.errors import LoadFailed, OperationFailed
from modeld.core.states import State
from modeld.engine.build import build_engine
from modeld.testing.ports import free_port
from tests.support import (
    EngineFactory,
    eventually,
    has_output,
    make_config,
    process_model,
    state_of,
)

FAKE_VLLM = resolve_command("modeld-fake-vllm")
# Prints a 70,000-character line (a logged prompt, a long traceback), then 1 MB more
# output (far past a pipe's 64 KiB: a reader that stopped would block the backend),
# then becomes the fake vLLM server.
LONG_LINE_THEN_SERVE = (
    "import os, sys; print('x' * 70000, flush=True); "
    "[print('y' * 10000) for _ in range(100)]; sys.stdout.flush(); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
# The backend starts a child that leaves its session and ignores SIGTERM, and a
# grandchild orphaned by a double fork; both keep stdout open. The sleeps in these
# backend bodies are their lifetimes, not waits of the test: bounded, so that if the
# code under test ever leaks them they still end on their own.
ESCAPING_CHILDREN = """
import os, signal, subprocess, sys, time
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
escaped = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
middle = os.fork()
if middle == 0:
    orphan = os.fork()
    if orphan == 0:
        os.setsid()
        time.sleep(120)
        os._exit(0)
    print("orphan", orphan, flush=True)
    os._exit(0)
os.waitpid(middle, 0)
print("escaped", escaped.pid, flush=True)
time.sleep(120)
"""


@pytest.fixture
async def runtime() -> AsyncIterator[ProcessRuntime]:
    """A process runtime, closed afterwards."""
    made = ProcessRuntime()
    yield made
    await made.close()


async def test_a_70000_character_line_loads_stops_and_keeps_the_daemon_usable() -> None:
    """A backend printing a 70,000-character line and 1 MB more loads to health, stops,
    and the daemon answers throughout; the line is kept cut, not whole."""
    assert FAKE_VLLM is not None
    port = free_port()
    command = [sys.executable, "-c", LONG_LINE_THEN_SERVE, FAKE_VLLM, "--port", str(port)]
    command += ["--model", "talker", "--load-seconds", "0.1"]
    config = make_config(
        {"talker": {"command": command, "endpoint": f"http://127.0.0.1:{port}"}}, [80]
    )
    runtime = ProcessRuntime()
    engine = await build_engine(
        config,
        gpu=SimulatedGpu(config.gpu),
        runtimes={"process": runtime},
        vllm=VllmClient(),
    )
    await engine.startup()
    try:
        result = await engine.models.switch("talker", timeout=30)
        assert result.state == "running"
        lines = (await engine.models.logs("talker", 2000)).lines
        long_lines = [line for line in lines if line.startswith("x")]
        assert long_lines, "the long line was lost"
        assert len(long_lines[0]) < MAX_LINE_CHARS + 100
        assert long_lines[0].endswith(f"[{70000 - MAX_LINE_CHARS} more characters]")
        assert (await engine.models.stop("talker")).status == "stopped"
        assert state_of(engine, "talker") is State.STOPPED
        assert engine.view.status().models["talker"].status == "stopped"
    finally:
        await engine.shutdown()


async def test_a_line_without_end_is_bounded(runtime: ProcessRuntime) -> None:
    """Output with no newline at all (10 MB) never grows one kept line past the limit."""
    # The sleep is the backend's lifetime (it stays up while the test reads its output),
    # not a wait of the test; the test stops it.
    spew = "import sys, time; print('z' * 10_000_000, end='', flush=True); time.sleep(60)"
    model = process_model([sys.executable, "-c", spew], stop_timeout_s=1)
    await runtime.start(model)
    await eventually(lambda: has_output(runtime, model))
    await runtime.stop(model)
    lines = await runtime.logs(model, 200)
    assert lines and all(len(line) < MAX_LINE_CHARS + 100 for line in lines)


async def test_children_that_leave_the_session_are_stopped_with_it(
    runtime: ProcessRuntime,
) -> None:
    """A child that calls setsid and ignores SIGTERM, and a double-forked orphan, are
    both ended by stop within stop_timeout_s plus a little; nothing is left running."""
    model = process_model([sys.executable, "-c", ESCAPING_CHILDREN], stop_timeout_s=0.5)
    await runtime.start(model)

    async def both_reported() -> bool:
        return len(await runtime.logs(model)) >= 2

    await eventually(both_reported)
    pids = {line.split()[0]: int(line.split()[1]) for line in await runtime.logs(model)}
    assert all(pid_alive(pid) for pid in pids.values())
    began = time.monotonic()
    await runtime.stop(model)
    took = time.monotonic() - began
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert took < model.stop_timeout_s + 3.0, f"stop took {took:.1f}s"


async def test_a_backend_that_dies_leaves_no_children_behind(runtime: ProcessRuntime) -> None:
    """When the backend's main process exits on its own, what it started is ended too
    (it would keep GPU memory), and the exit code is the main process's."""
    leave = (
        "import subprocess, sys; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
        "start_new_session=True); print('child', c.pid, flush=True); sys.exit(7)"
    )
    model = process_model([sys.executable, "-c", leave], stop_timeout_s=1)
    await runtime.start(model)
    exited = await asyncio.wait_for(runtime.wait_exit(model), 15)
    assert exited.exit_code == 7
    child = int((await runtime.logs(model))[0].split()[1])
    assert not pid_alive(child)


async def test_backends_get_a_clean_declared_environment(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of the daemon's environment reaches a backend but the basics, `pass_env`
    and its own `env` (no credentials, no NOTIFY_SOCKET)."""
    monkeypatch.setenv("MODELD_TEST_SECRET", "hunter2")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("HF_HOME", "/srv/hf")
    passing = ProcessRuntime(pass_env=["HF_HOME"])
    show = "import json, os; print(json.dumps(dict(os.environ)), flush=True)"
    model = process_model([sys.executable, "-c", show], env={"DECLARED": "yes"})
    try:
        await passing.start(model)
        await passing.wait_exit(model)
        seen = json.loads((await passing.logs(model))[0])
    finally:
        await passing.close()
    assert seen["DECLARED"] == "yes"
    assert seen["HF_HOME"] == "/srv/hf"
    assert "MODELD_TEST_SECRET" not in seen
    assert "NOTIFY_SOCKET" not in seen
    basics = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "HF_HOME", "DECLARED"}
    assert set(seen) <= basics | {"CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES"}


async def test_a_backend_sees_only_its_own_gpus(runtime: ProcessRuntime) -> None:
    """A process backend is given the model's `gpus` as CUDA_VISIBLE_DEVICES, in NVML's
    numbering (PCI bus order), so two models on one host do not both start on device 0;
    a model's own `env` still decides where it says so."""
    show = "import json, os; print(json.dumps(dict(os.environ)), flush=True)"
    placed = process_model([sys.executable, "-c", show], gpus=[1, 2])
    chosen = process_model(
        [sys.executable, "-c", show], gpus=[3], env={"CUDA_VISIBLE_DEVICES": "GPU-1234"}
    )
    seen = []
    for model in (placed, chosen):
        await runtime.start(model)
        await runtime.wait_exit(model)
        seen.append(json.loads((await runtime.logs(model))[0]))
    assert seen[0]["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert seen[0]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert seen[1]["CUDA_VISIBLE_DEVICES"] == "GPU-1234"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may set and drop groups")
async def test_backends_do_not_inherit_supplementary_groups(runtime: ProcessRuntime) -> None:
    """A daemon in the docker group (root-equivalent) does not pass it to backends."""
    show = "import os; print(sorted(set(os.getgroups()) - {os.getegid()}), flush=True)"
    model = process_model([sys.executable, "-c", show])
    previous = os.getgroups()
    os.setgroups([*previous, 4242])
    try:
        await runtime.start(model)
    finally:
        os.setgroups(previous)
    await runtime.wait_exit(model)
    assert (await runtime.logs(model)) == ["[]"]


# Run inside a fresh PID namespace: reap a backend, make the kernel hand its PID to an
# unrelated process (ns_last_pid), stop the backend again, report whether it survived.
PID_REUSE = """
import asyncio, os, subprocess, sys
from modeld.core.config import ModelConfig
from modeld.adapters.runtime.process import ProcessRuntime

async def main():
    model = ModelConfig.model_validate({"name": "m", "runtime": "process",
        "command": [sys.executable, "-c", "pass"], "endpoint": "http://127.0.0.1:1"})
    runtime = ProcessRuntime()
    started = await runtime.start(model)
    await runtime.wait_exit(model)
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(started.pid - 1))
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    if stranger.pid != started.pid:
        print("no-reuse"); stranger.kill(); return
    await runtime.stop(model)
    await runtime.close()
    print("alive" if stranger.poll() is None else "killed")
    stranger.kill()

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a PID namespace")
def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """After a backend was reaped, its PID may belong to a stranger: stop and close must
    not signal it (reproduced with a PID namespace that hands the PID out again)."""
    script = tmp_path / "reuse.py"
    script.write_text(PID_REUSE)
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no PID namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    verdict = done.stdout.split()[-1]
    if verdict == "no-reuse":
        pytest.skip("the kernel did not hand the PID out again")
    assert verdict == "alive"


async def test_a_runtime_crash_never_leaves_a_model_loading_or_stopping(
    engines: EngineFactory,
) -> None:
    """Whatever a runtime raises on start or stop (not only modeld's own errors), the
    model ends `failed` with the reason, the caller gets a clear error, and the daemon
    serves on."""
    engine, runtime, _ = await engines(make_config({"m": {"gpu_memory_gb": 10}}, [80]))
    await engine.models.switch("m")

    async def crash(model: ModelConfig) -> None:
        raise ValueError("Separator is found, but chunk is longer than limit")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "stop", crash)
        with pytest.raises(OperationFailed, match="chunk is longer"):
            await engine.models.stop("m")
    assert state_of(engine, "m") is State.FAILED
    await engine.models.stop("m")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "start", crash)
        with pytest.raises(LoadFailed, match="chunk is longer"):
            await engine.models.switch("m")
    assert state_of(engine, "m") is State.FAILED
    assert (await engine.models.switch("m")).state == "running"
