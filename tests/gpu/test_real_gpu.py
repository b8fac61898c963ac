"""Checks against a real NVIDIA GPU (skipped where no driver is present).

Run on a GPU machine: `pytest tests/gpu -v`. Needs torch with CUDA there. They read
the card; they never change its settings.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from modeld.adapters.gpu.base import GIB, BackendRef, GpuReading
from modeld.adapters.gpu.nvml import NvmlMonitor
from modeld.adapters.runtime.process import ProcessRuntime
from modeld.core.config import ModelConfig
from tests.support import eventually

pytestmark = pytest.mark.skipif(
    not Path("/dev/nvidiactl").exists(), reason="no NVIDIA driver on this host"
)

ALLOCATE_GB = 2.0
HELPER = (
    "import sys, time, torch\n"
    "x = torch.empty(int(float(sys.argv[1]) * 1024**3), dtype=torch.uint8, device='cuda')\n"
    "x.fill_(1); torch.cuda.synchronize(); print('ready', flush=True); time.sleep(600)\n"
)


async def read(backends: list[BackendRef]) -> GpuReading:
    """One NVML reading."""
    monitor = await NvmlMonitor.open()
    try:
        return await monitor.read(backends)
    finally:
        await monitor.close()


def test_nvml_agrees_with_torch() -> None:
    """NVML's total and free memory on device 0 agree with torch.cuda.mem_get_info."""
    torch = pytest.importorskip("torch")
    free, total = torch.cuda.mem_get_info(0)
    device = asyncio.run(read([])).devices[0]
    assert abs(device.total_gb - total / GIB) < 0.05
    # torch's own context takes a little; the rest of the card is what NVML sees free.
    assert abs(device.free_gb - free / GIB) < 1.0


async def test_allocation_is_attributed_then_released() -> None:
    """A process-runtime backend allocating 2 GB is attributed to its model, and the memory
    is seen released after it stops."""
    pytest.importorskip("torch")
    model = ModelConfig.model_validate(
        {
            "name": "helper",
            "runtime": "process",
            "endpoint": "http://127.0.0.1:1",
            "command": [sys.executable, "-c", HELPER, str(ALLOCATE_GB)],
            "stop_timeout_s": 10,
        }
    )
    runtime = ProcessRuntime()
    before = (await read([])).devices[0].used_gb
    try:
        started = await runtime.start(model)
        assert started.pid is not None
        ref = BackendRef("helper", started.pid)

        async def ready() -> bool:
            return "ready" in await runtime.logs(model)

        await eventually(ready, timeout=120)
        reading = await read([ref])
        if not reading.per_process:
            pytest.skip("the driver hides per-process memory here (container, MIG or vGPU)")
        held = reading.per_model["helper"][0]
        # The allocation plus a CUDA context of a few hundred MB.
        assert ALLOCATE_GB <= held <= ALLOCATE_GB + 1.0
        print(f"attributed to helper: {held:.2f} GB on {reading.devices[0].name}")
    finally:
        await runtime.stop(model)
        await runtime.close()

    async def released() -> bool:
        return (await read([])).devices[0].used_gb < before + 0.5

    await eventually(released, timeout=30)
