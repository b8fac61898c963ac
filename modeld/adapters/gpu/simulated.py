"""A simulated GPU that behaves like NVML, for the demo and the tests.

Memory appears when a backend process is first seen alive, stays held while the
process lives, and is released `release_delay_s` after it is seen dead, as a real
driver frees a CUDA context some time after its process exits. A backend parked with
vLLM's sleep mode keeps `sleep_residual_gb` per device (most, not all, is freed), and
takes its whole share again once it is woken. `external_used_gb`
is memory held by processes modeld does not manage: nobody can free it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modeld.adapters.gpu.base import BackendRef, DeviceReading, GpuReading, ProcessUse, pid_alive
from modeld.core.gpu_config import GpuConfig


@dataclass
class _Hold:
    model: str
    per_device: dict[int, float]
    released_at: float | None = None
    parked: bool = False


class SimulatedGpu:
    """A GpuMonitor over simulated devices."""

    backend = "simulated"

    def __init__(
        self,
        config: GpuConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self._config = config
        self._clock = clock
        self._alive = alive
        self._holds: dict[int, _Hold] = {}

    async def read(self, backends: Sequence[BackendRef]) -> GpuReading:
        """Account for newly seen and newly dead backends, then report every device."""
        now = self._clock()
        for ref in backends:
            if not self._alive(ref.pid):
                continue
            holds = dict(ref.expected_gb)
            if ref.parked:
                residual = self._config.sleep_residual_gb
                holds = {device: min(gb, residual) for device, gb in holds.items()}
            hold = self._holds.setdefault(ref.pid, _Hold(ref.model, holds, parked=ref.parked))
            if hold.parked != ref.parked:
                hold.per_device, hold.parked = holds, ref.parked
        for pid, hold in list(self._holds.items()):
            if hold.released_at is None and not self._alive(pid):
                hold.released_at = now + self._config.release_delay_s
            if hold.released_at is not None and now >= hold.released_at:
                del self._holds[pid]
        devices = []
        per_model: dict[str, dict[int, float]] = {}
        for index, total in enumerate(self._config.devices_gb):
            used = self._config.external_for(index)
            for hold in self._holds.values():
                share = hold.per_device.get(index, 0.0)
                used += share
                # Like NVML: a dead process is no longer listed, though its memory lingers.
                if share and hold.released_at is None:
                    model = per_model.setdefault(hold.model, {})
                    model[index] = model.get(index, 0.0) + share
            devices.append(DeviceReading(index, f"Simulated GPU {index}", total, used))
        processes = tuple(
            ProcessUse(pid, device, gb, hold.model)
            for pid, hold in self._holds.items()
            if hold.released_at is None
            for device, gb in hold.per_device.items()
        )
        return GpuReading(tuple(devices), per_model, time.time(), True, processes)

    async def close(self) -> None:
        """Nothing to release."""
