"""NVML against a real card: totals agree with nvidia-smi, used never exceeds total."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from modeld.adapters.gpu.base import GpuReading
from modeld.adapters.gpu.nvml import NvmlMonitor


def _nvml_or_skip() -> None:
    if not Path("/dev/nvidiactl").exists():
        pytest.skip("no NVIDIA driver on this host (run on a lent GPU machine)")


async def _read_nvml_once() -> GpuReading:
    monitor = await NvmlMonitor.open()
    try:
        return await monitor.read([])
    finally:
        await monitor.close()


def test_nvml_reads_real_devices() -> None:
    """On a GPU host: NVML totals agree with nvidia-smi and used never exceeds total."""
    _nvml_or_skip()
    reading = asyncio.run(_read_nvml_once())
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    )
    totals_mib = [int(line) for line in smi.stdout.split()]
    assert [round(d.total_gb * 1024) for d in reading.devices] == pytest.approx(totals_mib, abs=2)
    for device in reading.devices:
        assert 0 <= device.used_gb <= device.total_gb
        assert device.name
