"""The GPU layer: the simulated driver's behaviour, PID attribution, and the real NVML."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeld.adapters.gpu.base import BackendRef, container_of, owner_of, pid_alive
from modeld.adapters.gpu.nvml import NvmlMonitor
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.core.errors import GpuUnavailable
from modeld.core.gpu_config import GpuConfig
from tests.support import EngineFactory, make_config


class Clock:
    """A hand-driven monotonic clock."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_simulated_memory_held_while_alive_released_after_delay() -> None:
    """Memory appears with the process, stays while it lives, lingers `release_delay_s`."""
    clock, alive = Clock(), {101}
    gpu = SimulatedGpu(
        GpuConfig(
            backend="simulated", devices_gb=[80, 80], external_used_gb=[5], release_delay_s=2.0
        ),
        clock=clock,
        alive=lambda pid: pid in alive,
    )
    ref = BackendRef("m", 101, expected_gb={0: 30, 1: 30})
    reading = await gpu.read([ref])
    assert [d.used_gb for d in reading.devices] == [35, 30]
    assert reading.per_model == {"m": {0: 30, 1: 30}}
    alive.clear()
    clock.now = 1.0
    reading = await gpu.read([])
    assert [d.used_gb for d in reading.devices] == [35, 30]
    assert reading.per_model == {}  # like NVML, a dead process is no longer listed
    clock.now = 3.0
    reading = await gpu.read([])
    assert [d.free_gb for d in reading.devices] == [75, 80]


async def test_external_memory_is_never_released() -> None:
    """Memory held by processes modeld does not manage stays used."""
    gpu = SimulatedGpu(GpuConfig(backend="simulated", devices_gb=[24], external_used_gb=[2]))
    assert (await gpu.read([])).devices[0].free_gb == 22


def test_owner_of_attributes_child_processes_to_backend() -> None:
    """A backend's child (vLLM's engine core) is attributed to the backend's model."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(30)']); print(c.pid, flush=True); c.wait()",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        refs = [BackendRef("other", 1_000_000_000), BackendRef("mine", parent.pid)]
        assert owner_of(child, refs) == "mine"
        assert owner_of(child, refs[:1]) is None
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.wait(timeout=10)


def test_dead_and_zombie_pids_are_not_alive() -> None:
    """An exited, unreaped child is a zombie and holds no GPU memory."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Wait for the exit without reaping it: the child stays a zombie.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert Path(f"/proc/{child.pid}").exists()
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)


def test_nvml_missing_driver_is_a_clear_error() -> None:
    """Without the driver, opening NVML raises GpuUnavailable with advice, not a traceback."""
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this host has an NVIDIA driver")
    with pytest.raises(GpuUnavailable, match="NVML cannot load"):
        asyncio.run(NvmlMonitor.open())


CID = "3f4e" + "a" * 60


@pytest.mark.parametrize(
    "cgroup",
    [
        f"0::/system.slice/docker-{CID}.scope\n",  # v2, systemd driver
        f"0::/docker/{CID}\n",  # v2, cgroupfs driver
        f"12:memory:/docker/{CID}\n11:cpu,cpuacct:/docker/{CID}\n",  # v1
        f"5:devices:/system.slice/docker-{CID}.scope\n",  # v1, systemd driver
        f"0::/kubepods/besteffort/pod1234/{CID}\n",  # a Kubernetes pod
    ],
    ids=["v2-systemd", "v2-cgroupfs", "v1", "v1-systemd", "kubepods"],
)
def test_container_of_reads_every_cgroup_layout(cgroup: str) -> None:
    """A process's container is found from /proc/<pid>/cgroup in every common layout."""
    assert container_of(cgroup) == CID


def test_container_of_ignores_processes_outside_containers() -> None:
    """A host process's cgroup names no container."""
    assert container_of("0::/user.slice/user-0.slice/session-1.scope\n") is None


async def test_unmanaged_memory_is_shown_per_device(engines: EngineFactory) -> None:
    """Memory no model's processes hold is shown as unmanaged on its device."""
    config = make_config({"a": {"gpu_memory_gb": 10}}, [24], gpu={"external_used_gb": [3]})
    engine, _, _ = await engines(config)
    await engine.models.switch("a")
    gpu = engine.view.gpu()
    [device] = gpu.devices
    assert (device.used_gb, device.unmanaged_gb) == (13.0, 3.0)
    [process] = gpu.processes
    assert (process.model, process.used_gb, process.unmanaged) == ("a", 10.0, False)
