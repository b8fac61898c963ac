"""The `[gpu]` table: which GPU monitor reads the devices (NVML, or the simulated GPU
for demos and tests) and how stale a reading may be."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from modeld.core.config_base import NonNegativeFloat, PositiveFloat, Strict


class GpuConfig(Strict):
    """The `[gpu]` table: the real NVML backend, or a simulated GPU for demos and tests."""

    backend: Literal["nvml", "simulated"] = "nvml"
    devices_gb: list[PositiveFloat] = Field(default_factory=lambda: [80.0])
    release_delay_s: NonNegativeFloat = 1.0
    external_used_gb: list[NonNegativeFloat] = Field(default_factory=list)
    stale_after_s: PositiveFloat = 10.0
    # Per device, what a sleeping backend still holds (vLLM keeps its CUDA context and
    # some buffers: not zero, sometimes gigabytes).
    sleep_residual_gb: NonNegativeFloat = 1.2

    @model_validator(mode="after")
    def _external_fits(self) -> Self:
        if len(self.external_used_gb) > len(self.devices_gb):
            raise ValueError("external_used_gb has more entries than devices_gb")
        for index, (ext, total) in enumerate(
            zip(self.external_used_gb, self.devices_gb, strict=False)
        ):
            if ext > total:
                raise ValueError(f"external_used_gb[{index}] = {ext} exceeds device total {total}")
        return self

    def external_for(self, device: int) -> float:
        """Memory held on `device` by processes modeld does not manage (simulated only)."""
        return self.external_used_gb[device] if device < len(self.external_used_gb) else 0.0
