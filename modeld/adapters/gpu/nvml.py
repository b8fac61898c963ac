"""The NVML adapter: real pynvml calls, always off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import pynvml

from modeld.adapters.gpu.base import (
    GIB,
    BackendRef,
    DeviceReading,
    GpuReading,
    ProcessUse,
    owner_of,
)
from modeld.adapters.gpu.nvml_health import XidWatcher, signals
from modeld.core.errors import GpuUnavailable


def _text(value: Any) -> str:
    # Older nvidia-ml-py returned bytes for names.
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlMonitor:
    """A GpuMonitor over the NVIDIA driver through NVML."""

    backend = "nvml"

    def __init__(self) -> None:
        # NVML calls are thread-safe, but reads are serialized so a slow driver call
        # never piles up threads.
        self._lock = threading.Lock()
        self._xids = XidWatcher()

    @classmethod
    async def open(cls) -> NvmlMonitor:
        """Initialise NVML; GpuUnavailable with the driver's reason when it cannot load."""
        try:
            await asyncio.to_thread(pynvml.nvmlInit)
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(
                f"NVML cannot load ({exc}): is the NVIDIA driver installed and "
                "/dev/nvidia* reachable? For a host without a GPU set [gpu] backend = "
                '"simulated".',
                reason=str(exc),
            ) from None
        monitor = cls()
        await asyncio.to_thread(monitor._xids.start)
        return monitor

    def _read_sync(self, backends: Sequence[BackendRef]) -> GpuReading:
        with self._lock:
            devices: list[DeviceReading] = []
            per_model: dict[str, dict[int, float]] = {}
            processes: list[ProcessUse] = []
            per_process = True
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                devices.append(
                    DeviceReading(
                        index=index,
                        name=_text(pynvml.nvmlDeviceGetName(handle)),
                        total_gb=memory.total / GIB,
                        used_gb=memory.used / GIB,
                        signals=signals(handle, self._xids.take(index)),
                    )
                )
                try:
                    running = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except pynvml.NVMLError:
                    per_process = False
                    continue
                for process in running:
                    # PIDs are host PIDs; usedGpuMemory is None where the driver hides it
                    # (some containers, MIG, vGPU).
                    if process.usedGpuMemory is None:
                        per_process = False
                        continue
                    model = owner_of(process.pid, backends)
                    used = process.usedGpuMemory / GIB
                    processes.append(ProcessUse(process.pid, index, used, model))
                    if model is None:
                        continue
                    share = per_model.setdefault(model, {})
                    share[index] = share.get(index, 0.0) + used
            return GpuReading(tuple(devices), per_model, time.time(), per_process, tuple(processes))

    async def read(self, backends: Sequence[BackendRef]) -> GpuReading:
        """Read every device in a worker thread; GpuUnavailable on a driver error."""
        try:
            return await asyncio.to_thread(self._read_sync, backends)
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML read failed: {exc}", reason=str(exc)) from None

    async def close(self) -> None:
        """Stop waiting for events; shut NVML down."""
        await asyncio.to_thread(self._xids.stop)
        with contextlib.suppress(pynvml.NVMLError):
            await asyncio.to_thread(pynvml.nvmlShutdown)
