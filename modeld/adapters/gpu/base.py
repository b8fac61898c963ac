"""What every GPU monitor returns, and the protocol it implements."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modeld.core.gpu_health import DeviceSignals

GIB = 1024**3


@dataclass(frozen=True)
class DeviceReading:
    """One device's memory in GB (GiB, as nvidia-smi counts)."""

    index: int
    name: str
    total_gb: float
    used_gb: float
    # What it says of its health in this reading (critical Xids since the last, ECC).
    signals: DeviceSignals = field(default_factory=DeviceSignals)

    @property
    def free_gb(self) -> float:
        """Memory nobody holds right now."""
        return max(0.0, self.total_gb - self.used_gb)


@dataclass(frozen=True)
class BackendRef:
    """A model's live backend as the monitor needs it: its host PID and what it should hold."""

    model: str
    pid: int
    container_id: str | None = None
    expected_gb: Mapping[int, float] = field(default_factory=dict)
    # Parked with vLLM's sleep mode (the simulated GPU then holds only a residual).
    parked: bool = False


@dataclass(frozen=True)
class ProcessUse:
    """One process's memory on one device, and the model it belongs to (None: unmanaged)."""

    pid: int
    device: int
    used_gb: float
    model: str | None


@dataclass(frozen=True)
class GpuReading:
    """Every device, and the memory attributed to each model's processes where known."""

    devices: tuple[DeviceReading, ...]
    per_model: Mapping[str, Mapping[int, float]]
    taken_at: float
    per_process: bool
    processes: tuple[ProcessUse, ...] = ()

    def device(self, index: int) -> DeviceReading | None:
        """The reading of one device, if it exists."""
        return next((d for d in self.devices if d.index == index), None)


class GpuMonitor(Protocol):
    """Reads GPU memory; the only place that talks to the GPU driver."""

    backend: str

    async def read(self, backends: Sequence[BackendRef]) -> GpuReading:
        """Read every device now; raise GpuUnavailable if it cannot be read."""
        ...

    async def close(self) -> None:
        """Release the driver."""
        ...


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie holds no GPU memory)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def parent_pid(pid: int) -> int | None:
    """The parent of `pid`, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def owner_of(pid: int, backends: Sequence[BackendRef]) -> str | None:
    """The model whose backend `pid` belongs to: a descendant of its root, or in its cgroup."""
    roots = {b.pid: b.model for b in backends}
    current: int | None = pid
    for _ in range(64):
        if current is None or current <= 1:
            break
        if current in roots:
            return roots[current]
        current = parent_pid(current)
    try:
        container = container_of(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None
    for backend in backends:
        if container and backend.container_id == container:
            return backend.model
    return None


# A Docker container id in a cgroup path: ".../docker/<id>" (cgroup v1, cgroupfs),
# ".../docker-<id>.scope" (systemd driver, v1 or v2), ".../<id>" under a Kubernetes pod.
_CONTAINER_ID = re.compile(r"(?:docker[-/]|/)([0-9a-f]{64})(?:\.scope)?(?:/|$)")


def container_of(cgroup: str) -> str | None:
    """The container id a process's /proc/<pid>/cgroup places it in, v1 or v2 layout."""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        if found := _CONTAINER_ID.search(path):
            return found.group(1)
    return None
