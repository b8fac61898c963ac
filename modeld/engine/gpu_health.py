"""Each device's health as the engine keeps it: assessed from every fresh reading (the
pure rules in core/gpu_health.py), cleared only by an operator. A model whose devices
include an unusable one is not loaded there (GpuUnusable)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog

from modeld.adapters.gpu.base import GpuReading
from modeld.core.errors import GpuUnusable, UnknownDevice
from modeld.core.gpu_health import DeviceHealth, DeviceSignals, DeviceState, assess, cleared

log = structlog.get_logger("modeld.engine.gpu_health")

# (device, its health before, its health now)
HealthListener = Callable[[int, DeviceHealth, DeviceHealth], None]


class GpuHealth:
    """Each device's health; listeners hear every change."""

    def __init__(self) -> None:
        self.devices: dict[int, DeviceHealth] = {}
        self._signals: dict[int, DeviceSignals] = {}
        self._listeners: list[HealthListener] = []

    def on_change(self, listener: HealthListener) -> None:
        """Call `listener` at each change of a device's health."""
        self._listeners.append(listener)

    def seen(self, reading: GpuReading) -> None:
        """A fresh reading: each device's signals move its health (down only)."""
        for device in reading.devices:
            self._signals[device.index] = device.signals
            before = self.devices.get(device.index, DeviceHealth())
            after = assess(before, device.signals)
            self.devices[device.index] = after
            if after != before:
                self._tell(device.index, before, after)

    def reset(self, index: int) -> DeviceHealth:
        """An operator checked the device: `ok` again (its ECC errors so far forgiven)."""
        if index not in self.devices:
            raise UnknownDevice(
                f"no GPU {index}; this host has {sorted(self.devices)}",
                device=index,
                available=sorted(self.devices),
            )
        before = self.devices[index]
        after = cleared(before, self._signals.get(index, DeviceSignals()))
        self.devices[index] = after
        if after != before:
            self._tell(index, before, after)
        return after

    def check(self, name: str, gpus: Iterable[int]) -> None:
        """GpuUnusable when any of `gpus` is unusable: no load is placed there."""
        for index in gpus:
            health = self.devices.get(index)
            if health is not None and health.state is DeviceState.UNUSABLE:
                raise GpuUnusable(
                    f"{name}: GPU {index} is unusable ({'; '.join(health.reasons)}); "
                    f"after a check or a reset of the device: modelctl gpu reset-health {index}",
                    model=name,
                    device=index,
                    reasons=list(health.reasons),
                )

    def _tell(self, index: int, before: DeviceHealth, after: DeviceHealth) -> None:
        if after.state is not before.state:
            log.warning(
                "gpu.health",
                device=index,
                from_health=before.state.value,
                to_health=after.state.value,
                reasons=list(after.reasons),
            )
        for listener in self._listeners:
            listener(index, before, after)
