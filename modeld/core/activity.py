"""Is a model being used? vLLM's `/metrics` says: its finished-request counter and its
running and waiting gauges (read by modeld.adapters.vllm). The idle decision is a pure function
of two readings."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Requests vLLM finished (any reason), and requests in its batches or queue now.
FINISHED = frozenset({"vllm:request_success_total"})
IN_FLIGHT = frozenset({"vllm:num_requests_running", "vllm:num_requests_waiting"})


@dataclass(frozen=True)
class Activity:
    """One reading of a backend's request metrics, summed over its label sets."""

    finished: float
    in_flight: float


def parse_activity(text: str) -> Activity | None:
    """The request counters in a Prometheus exposition; None if vLLM's are not there."""
    finished = in_flight = 0.0
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in FINISHED:
                finished += sample.value
                seen = True
            elif sample.name in IN_FLIGHT:
                in_flight += sample.value
                seen = True
    return Activity(finished, in_flight) if seen else None


def last_active(
    previous: Activity | None, current: Activity | None, since: float, now: float
) -> float:
    """When the model was last seen busy: now if requests are in flight or more finished
    since the previous reading, else `since` unchanged. Unreadable metrics count as busy:
    a model is never unloaded on a guess."""
    if current is None or current.in_flight > 0:
        return now
    if previous is not None and current.finished != previous.finished:
        return now
    return since
