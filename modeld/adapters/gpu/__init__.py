"""The GPU layer: one GpuMonitor protocol, with an NVML and a simulated implementation."""

from modeld.adapters.gpu.base import BackendRef, DeviceReading, GpuMonitor, GpuReading
from modeld.core.gpu_config import GpuConfig


async def open_gpu_monitor(config: GpuConfig) -> GpuMonitor:
    """Open the monitor the config asks for; GpuUnavailable if NVML cannot load."""
    if config.backend == "simulated":
        from modeld.adapters.gpu.simulated import SimulatedGpu

        return SimulatedGpu(config)
    from modeld.adapters.gpu.nvml import NvmlMonitor

    return await NvmlMonitor.open()


__all__ = [
    "BackendRef",
    "DeviceReading",
    "GpuMonitor",
    "GpuReading",
    "open_gpu_monitor",
]
