"""How much GPU memory a model needs per device, and where that figure comes from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from modeld.core.config import ModelConfig

# The seed's rule of thumb, kept only as a last resort: vLLM does not reserve by model size.
SEED_SIZE_FACTOR = 0.85
# What a parked (sleeping) vLLM is assumed to keep per device until it has been measured
# here: its CUDA context, NCCL and allocator buffers. Deliberately not small: a plan
# that counts on too little coming back stops one more model afterwards.
SLEEP_RESIDUAL_ESTIMATE_GB = 2.0


class Source(StrEnum):
    """Where a memory figure comes from, most trustworthy first."""

    MEASURED = "measured"
    # The peak measured on this host the last time it ran under the same settings.
    LEARNED = "learned"
    CONFIGURED = "configured"
    UTILIZATION = "utilization"
    ESTIMATED = "estimated"


@dataclass(frozen=True)
class Need:
    """GB needed on each device the model uses, and the figure's source."""

    per_device: Mapping[int, float]
    source: Source

    @property
    def total_gb(self) -> float:
        """The need summed over devices."""
        return sum(self.per_device.values())


def model_need(
    model: ModelConfig,
    device_totals: Mapping[int, float],
    learned: Mapping[int, float] | None = None,
) -> Need:
    """A model's need per device: its learned peak, else gpu_memory_gb, else U x total,
    else the seed's size x 0.85."""
    if learned and all(learned.get(gpu, 0.0) > 0 for gpu in model.gpus):
        return Need({gpu: learned[gpu] for gpu in model.gpus}, Source.LEARNED)
    if model.gpu_memory_gb is not None:
        return Need({gpu: model.gpu_memory_gb for gpu in model.gpus}, Source.CONFIGURED)
    if model.gpu_memory_utilization is not None:
        utilization = model.gpu_memory_utilization
        return Need(
            {gpu: utilization * device_totals.get(gpu, 0.0) for gpu in model.gpus},
            Source.UTILIZATION,
        )
    # Tensor-parallel weights split across devices; the seed knew only one device.
    share = model.size_gb * SEED_SIZE_FACTOR / len(model.gpus)
    return Need({gpu: share for gpu in model.gpus}, Source.ESTIMATED)


def parked_residual(
    model: ModelConfig, need: Need, measured: Mapping[int, float] | None
) -> dict[int, float]:
    """What a model keeps per device once parked: measured the last time it was, else
    the estimate (never more than its whole need)."""
    if measured and all(gpu in measured for gpu in model.gpus):
        return {gpu: measured[gpu] for gpu in model.gpus}
    return {
        gpu: min(SLEEP_RESIDUAL_ESTIMATE_GB, need.per_device.get(gpu, 0.0)) for gpu in model.gpus
    }
