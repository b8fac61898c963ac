"""Prometheus metrics: events the Engine reports, and its state read at scrape time.

State (model states, GPU memory) is not copied into gauges: a collector reads the
Engine's `status` when Prometheus scrapes, on the event loop, so the two never
disagree. Durations and counts are recorded as they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from modeld.core.addresses import split_host_port
from modeld.core.states import State
from modeld.wire.status import Status

GIB = 1024**3
LOAD_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
# vLLM's published wakes take 0.3 to 6 s.
WAKE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 20, 60)


class MetricsSink(Protocol):
    """What the Engine reports as it works. Each report does nothing unless a sink
    records it (NoMetrics keeps these defaults)."""

    def switch_done(self, outcome: str, seconds: float) -> None:
        """A switch ended (`success`, `already_loaded` or an error name)."""
        return None

    def load_done(self, model: str, seconds: float) -> None:
        """A model reached health after `seconds` of loading."""
        return None

    def evicted(self, model: str) -> None:
        """A model was stopped to make room."""
        return None

    def failed(self, model: str) -> None:
        """A model entered `failed`."""
        return None

    def parked(self, model: str) -> None:
        """A model was parked with vLLM's sleep mode."""
        return None

    def woke(self, model: str, seconds: float | None) -> None:
        """A parked model was woken in `seconds`, or (None) would not wake."""
        return None

    def acquired(self, model: str, seconds: float) -> None:
        """A lease was granted after waiting `seconds` (loading, switching, draining)."""
        return None

    def models_busy(self) -> None:
        """A switch or stop was refused: the models it needed kept serving requests."""
        return None


class NoMetrics(MetricsSink):
    """A sink that records nothing (no [metrics] configured): the protocol's own methods,
    which do nothing, are its whole body."""


class _StatusCollector(Collector):
    """Gauges read from the Engine's status at scrape time."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        state = GaugeMetricFamily(
            "modeld_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        memory = GaugeMetricFamily(
            "modeld_model_gpu_memory_bytes",
            "GPU memory a model holds, per device",
            labels=["model", "device", "source"],
        )
        for name, model in status.models.items():
            for candidate in State:
                state.add_metric([name, candidate.value], float(model.status == candidate))
            for device, gb in model.gpu_memory_per_device_gb.items():
                memory.add_metric([name, device, model.gpu_memory_source or ""], gb * GIB)
        gpu = GaugeMetricFamily(
            "modeld_gpu_memory_bytes", "GPU memory per device", labels=["device", "kind"]
        )
        for card in status.gpu.devices:
            held = (("total", card.total_gb), ("used", card.used_gb), ("free", card.free_gb))
            for kind, gb in held:
                gpu.add_metric([str(card.index), kind], gb * GIB)
        health = GaugeMetricFamily(
            "modeld_gpu_health",
            "1 for each device's health (ok, degraded, unusable)",
            labels=["device", "health"],
        )
        for card in status.gpu.devices:
            for kind in ("ok", "degraded", "unusable"):
                health.add_metric([str(card.index), kind], float(card.health == kind))
        in_flight = GaugeMetricFamily(
            "modeld_operations_in_flight", "Operations running or waiting for their turn"
        )
        in_flight.add_metric([], status.in_flight)
        parked = GaugeMetricFamily(
            "modeld_parked_ram_bytes",
            "Host RAM taken by parked models' weights, and the budget",
            labels=["kind"],
        )
        parked.add_metric(["used"], status.parking.ram_used_gb * GIB)
        parked.add_metric(["budget"], status.parking.ram_budget_gb * GIB)
        leases = GaugeMetricFamily(
            "modeld_leases", "Requests in flight (leases held) per model", labels=["model"]
        )
        for name, model in status.models.items():
            leases.add_metric([name], model.leases)
        # What the backends' own /metrics said at the last poll (running models only).
        working = GaugeMetricFamily(
            "modeld_model_requests_in_backend",
            "Requests running or queued in a model's backend",
            labels=["model"],
        )
        requests = GaugeMetricFamily(
            "modeld_model_requests_per_second",
            "Requests a model finished per second",
            labels=["model"],
        )
        tokens = GaugeMetricFamily(
            "modeld_model_generation_tokens_per_second",
            "Tokens a model generated per second",
            labels=["model"],
        )
        for name, model in status.models.items():
            activity = model.activity
            if activity is None:
                continue
            working.add_metric([name], activity.in_flight)
            if activity.requests_per_s is not None:
                requests.add_metric([name], activity.requests_per_s)
            if activity.tokens_per_s is not None:
                tokens.add_metric([name], activity.tokens_per_s)
        yield from (
            state,
            memory,
            gpu,
            health,
            in_flight,
            parked,
            leases,
            working,
            requests,
            tokens,
        )


class Metrics:
    """The registry modeld serves, and the sink the Engine reports to."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._switch = Histogram(
            "modeld_switch_duration_seconds",
            "Time a switch took, by outcome",
            ["outcome"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self._load = Histogram(
            "modeld_load_duration_seconds",
            "Time from start to health, by model",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self._evictions = Counter(
            "modeld_evictions", "Models stopped to make room", ["model"], registry=self.registry
        )
        self._failures = Counter(
            "modeld_failures", "Models that entered failed", ["model"], registry=self.registry
        )
        self._parks = Counter(
            "modeld_parks",
            "Models parked with vLLM's sleep mode",
            ["model"],
            registry=self.registry,
        )
        self._wake = Histogram(
            "modeld_wake_duration_seconds",
            "Time a parked model took to wake, by model",
            ["model"],
            buckets=WAKE_BUCKETS,
            registry=self.registry,
        )
        self._wake_failures = Counter(
            "modeld_wake_failures",
            "Parked models that would not wake (cold-started instead)",
            ["model"],
            registry=self.registry,
        )
        self._acquire = Histogram(
            "modeld_acquire_wait_seconds",
            "Time an acquire waited for its lease, by model",
            ["model"],
            buckets=(0.001, 0.01, 0.1, *LOAD_BUCKETS),
            registry=self.registry,
        )
        self._busy = Counter(
            "modeld_models_busy",
            "Switches and stops refused because the models they needed kept serving",
            registry=self.registry,
        )

    def watch(self, status: Callable[[], Status]) -> None:
        """Export the Engine's state, read at each scrape."""
        self.registry.register(_StatusCollector(status))

    def switch_done(self, outcome: str, seconds: float) -> None:
        """Record a switch."""
        self._switch.labels(outcome).observe(seconds)

    def load_done(self, model: str, seconds: float) -> None:
        """Record a load."""
        self._load.labels(model).observe(seconds)

    def evicted(self, model: str) -> None:
        """Count an eviction."""
        self._evictions.labels(model).inc()

    def failed(self, model: str) -> None:
        """Count a failure."""
        self._failures.labels(model).inc()

    def parked(self, model: str) -> None:
        """Count a park."""
        self._parks.labels(model).inc()

    def woke(self, model: str, seconds: float | None) -> None:
        """Record a wake, or count one that failed."""
        if seconds is None:
            self._wake_failures.labels(model).inc()
        else:
            self._wake.labels(model).observe(seconds)

    def acquired(self, model: str, seconds: float) -> None:
        """Record an acquire's wait."""
        self._acquire.labels(model).observe(seconds)

    def models_busy(self) -> None:
        """Count a models_busy refusal."""
        self._busy.inc()


async def serve_metrics(metrics: Metrics, listen: str) -> web.AppRunner:
    """Serve /metrics on `host:port` from the event loop; the runner, to clean up."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = split_host_port(listen)
    await web.TCPSite(runner, host, port).start()
    return runner
