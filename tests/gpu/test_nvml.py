"""NVML against a real card: totals agree with nvidia-smi, used never exceeds total."""

from __future__ import annotations

import asyncio
import subprocess
import threading
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


def test_nvml_health_signals_read_and_the_xid_watcher_stops() -> None:
    """On a GPU host: each device's health signals are read (an H100's ECC count is a
    number, its retired-page state known), a healthy card has no Xid and no
    uncorrected error since the driver loaded, and the Xid event thread ends with
    close()."""
    _nvml_or_skip()

    async def read() -> tuple[GpuReading, bool]:
        monitor = await NvmlMonitor.open()
        try:
            reading = await monitor.read([])
        finally:
            await monitor.close()
        return reading, any(t.name == "nvml-xid" and t.is_alive() for t in threading.enumerate())

    reading, watcher_alive = asyncio.run(read())
    assert not watcher_alive
    for device in reading.devices:
        assert device.signals.xids == ()
        assert device.signals.ecc_uncorrected in (None, 0)
        assert device.signals.remap_failed in (None, False)
