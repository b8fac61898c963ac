"""The model-server metrics protocol of the Gateway API Inference Extension (GIE,
docs/proposals/003-model-server-protocol), on modeld-gateway's /metrics: a modeld host
is one endpoint of an InferencePool, with models in place of LoRA adapters, so that the
endpoint picker's scorers (queue, KV cache, LoRA affinity) can choose among hosts.

- `vllm:num_requests_waiting`: requests queued at this host: those waiting at the
  daemon for a load or their turn (acquires), and those queued in the backends.
- `vllm:num_requests_running`: requests the backends are running.
- `vllm:kv_cache_usage_perc`: the fullest running backend's KV cache (0 to 1).
- `vllm:lora_requests_info{running_lora_adapters, waiting_lora_adapters, max_lora}`,
  whose value is the time of the latest change, as vLLM reports it: the models resident
  and serving (and their aliases: the names requests use), the models not resident that
  are loading or have requests queued, and the room for more (`max_lora`, below).

`max_lora` is in the units the LoRA-affinity scorer counts, names: it sees room for
one more when the names listed in both lists are fewer than `max_lora`. A model is
listed with its aliases (the names requests use), so `max_lora` is the names listed plus
one for each model that still fits: room exactly when one more model fits. Which models
fit is an approximation: the most configured models whose memory needs, smallest first,
fit in the host's total GPU memory together; the planner decides per device, so a host
may hold fewer (needs spread badly over devices) or the same models in other
combinations. LoRA adapters (docs/adapters.md) are listed as models are: running when
loaded in a running base (exactly what the scorer's affinity routes on), and each free
adapter slot of a resident base (its `--max-cpu-loras`, at least `--max-loras`) counts
as room for one more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modeld.wire.status import Status

RESIDENT = frozenset({"running"})
ON_THE_WAY = frozenset({"loading"})


def max_models(status: Status) -> int:
    """How many configured models fit at once, smallest needs first, in all the GPU
    memory (see the module's note)."""
    total = sum(d.total_gb for d in status.gpu.devices)
    held = 0.0
    count = 0
    # Adapters take no memory of their own: their room is their bases' slots.
    needs = sorted(m.gpu_memory_required_gb for m in status.models.values() if m.base is None)
    for need in needs:
        if held + need > total:
            break
        held, count = held + need, count + 1
    return count


def free_adapter_slots(status: Status) -> int:
    """Adapters the resident bases could still load without unloading one."""
    free = 0
    for model in status.models.values():
        if model.status in RESIDENT and model.adapter_slots:
            loaded = sum(
                status.models[name].status in RESIDENT | ON_THE_WAY
                for name in model.adapters
                if name in status.models
            )
            free += max(0, model.adapter_slots - loaded)
    return free


class _Scrape(Collector):
    """The families of one scrape, for the exposition writer."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class ModelServerMetrics:
    """The protocol's families from the daemon's status, and the time the adapter sets
    last changed (kept across scrapes)."""

    def __init__(self) -> None:
        self._adapters: tuple[str, str, str] | None = None
        self._changed_at = time.time()

    def families(self, status: Status) -> list[Metric]:
        """The four families, as one scrape reports them."""
        waiting = running = kv_cache = 0.0
        resident: list[str] = []
        coming: list[str] = []
        held = 0
        for name, model in status.models.items():
            waiting += model.waiting
            if (activity := model.activity) is not None:
                waiting += activity.waiting
                running += activity.in_flight - activity.waiting
                kv_cache = max(kv_cache, activity.kv_cache_usage)
            names = [name, *model.aliases]
            # Each model in one list only: the scorer counts both lists against max_lora,
            # and a resident model's queued requests take no more memory.
            if model.status in RESIDENT:
                resident += names
            elif model.status in ON_THE_WAY or model.waiting > 0:
                coming += names
            else:
                continue
            held += model.base is None
        # In the scorer's units, names: those listed, one per model that still fits, and
        # one per adapter slot still free in a resident base.
        capacity = (
            len(resident)
            + len(coming)
            + max(0, max_models(status) - held)
            + free_adapter_slots(status)
        )
        adapters = (",".join(resident), ",".join(coming), str(capacity))
        if adapters != self._adapters:
            self._adapters, self._changed_at = adapters, time.time()
        queue = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Requests queued at this modeld host (GIE protocol)"
        )
        queue.add_metric([], waiting)
        busy = GaugeMetricFamily(
            "vllm:num_requests_running", "Requests the host's backends are running"
        )
        busy.add_metric([], running)
        cache = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "The fullest running backend's KV cache use, 0 to 1"
        )
        cache.add_metric([], kv_cache)
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Models resident (running_lora_adapters) and on their way (waiting_lora_adapters), "
            "and how many fit at once (max_lora); the value is the time of the last change",
            labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
        )
        info.add_metric(list(adapters), self._changed_at)
        return [queue, busy, cache, info]

    def exposition(self, status: Status) -> bytes:
        """The families in Prometheus' text format."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scrape(self.families(status)))
        return generate_latest(registry)
