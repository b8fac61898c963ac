"""A simulated GPU that behaves like NVML, for the demo and the tests.

Memory appears when a backend process is first seen alive, stays held while the
process lives, and is released `release_delay_s` after it is seen dead, as a real
driver frees a CUDA context some time after its process exits. A backend parked with
vLLM's sleep mode keeps `sleep_residual_gb` per device (most, not all, is freed), and
takes its whole share again once it is woken. `external_used_gb`
is memory held by processes modeld does not manage: nobody can free it.

Faults a real device shows can be injected (`xid`, `ecc_error`, `retirement_pending`),
and memory held by a foreign process with a PID (`hold_foreign`), as NVML lists it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from modeld.adapters.gpu.base import BackendRef, DeviceReading, GpuReading, ProcessUse, pid_alive
from modeld.core.gpu_config import GpuConfig
from modeld.core.gpu_health import DeviceSignals


@dataclass
class _Hold:
    model: str
    per_device: dict[int, float]
    released_at: float | None = None
    parked: bool = False


@dataclass
class _Faults:
    """What a simulated device reports of its health."""

    xids: list[int] = field(default_factory=list)
    signals: DeviceSignals = field(
        default_factory=lambda: DeviceSignals(ecc_uncorrected=0, retirement_pending=False)
    )


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
        self._faults: dict[int, _Faults] = {}
        # Foreign processes: PID -> (device, GB held).
        self._foreign: dict[int, tuple[int, float]] = {}

    def xid(self, device: int, xid: int) -> None:
        """The driver reports a critical Xid on `device` (seen by the next reading)."""
        self._faults.setdefault(device, _Faults()).xids.append(xid)

    def ecc_error(self, device: int, count: int = 1) -> None:
        """`count` more uncorrected (double-bit) ECC errors on `device`."""
        faults = self._faults.setdefault(device, _Faults())
        ecc = (faults.signals.ecc_uncorrected or 0) + count
        faults.signals = replace(faults.signals, ecc_uncorrected=ecc)

    def retirement_pending(self, device: int, pending: bool = True) -> None:
        """Retired pages wait for a reset on `device` (or no longer do)."""
        faults = self._faults.setdefault(device, _Faults())
        faults.signals = replace(faults.signals, retirement_pending=pending)

    def hold_foreign(self, pid: int, device: int, gb: float) -> None:
        """A process modeld does not manage holds `gb` on `device` (0: it let go)."""
        if gb:
            self._foreign[pid] = (device, gb)
        else:
            self._foreign.pop(pid, None)

    def _signals(self, device: int) -> DeviceSignals:
        faults = self._faults.setdefault(device, _Faults())
        xids, faults.xids = tuple(faults.xids), []
        return replace(faults.signals, xids=xids)

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
            used += sum(gb for on, gb in self._foreign.values() if on == index)
            for hold in self._holds.values():
                share = hold.per_device.get(index, 0.0)
                used += share
                # Like NVML: a dead process is no longer listed, though its memory lingers.
                if share and hold.released_at is None:
                    model = per_model.setdefault(hold.model, {})
                    model[index] = model.get(index, 0.0) + share
            name = f"Simulated GPU {index}"
            devices.append(DeviceReading(index, name, total, used, self._signals(index)))
        processes = tuple(
            ProcessUse(pid, device, gb, hold.model)
            for pid, hold in self._holds.items()
            if hold.released_at is None
            for device, gb in hold.per_device.items()
        ) + tuple(ProcessUse(pid, on, gb, None) for pid, (on, gb) in self._foreign.items())
        return GpuReading(tuple(devices), per_model, time.time(), True, processes)

    async def close(self) -> None:
        """Nothing to release."""
