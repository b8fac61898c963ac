"""The Prometheus metrics a fake vLLM server exports, under vLLM's names: requests
running and waiting, the KV cache (each running request holds a share), the sleep
state, and the counters of requests finished and tokens generated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

# The share of the KV cache one running request holds: vLLM's gauge rises with the
# tokens in flight; the fake's with the requests, full at four.
KV_CACHE_PER_REQUEST = 0.25
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")


class FakeVllmMetrics:
    """One server's metrics, in a registry of their own."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        labels = {"model_name": model}
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)
        self._running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)
        # Requests being answered now: what the KV-cache gauge follows.
        self._in_flight = 0
        Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels).set_function(lambda: min(1.0, self._in_flight * KV_CACHE_PER_REQUEST))
        self._sleep_state = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state: 1 for the current one.",
            ["sleep_state", "model_name"],
            registry=self.registry,
        )
        self.show_sleep_state(sleeping=False)
        self.finished = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["finished_reason", "model_name"],
            registry=self.registry,
        ).labels(finished_reason="stop", **labels)
        self.generated = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count one request as running (and holding KV cache) while inside."""
        self._running.inc()
        self._in_flight += 1
        try:
            yield
        finally:
            self._running.dec()
            self._in_flight -= 1

    def show_sleep_state(self, sleeping: bool) -> None:
        """Mark the current sleep state 1, the others 0."""
        current = "weights_offloaded" if sleeping else "awake"
        for state in SLEEP_STATES:
            self._sleep_state.labels(state, self.model).set(float(state == current))

    def exposition(self) -> bytes:
        """Prometheus' text format, as vLLM's /metrics serves it."""
        return generate_latest(self.registry)
