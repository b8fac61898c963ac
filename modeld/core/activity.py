"""Is a model being used, and how much? vLLM's `/metrics` says: its finished-request and
generated-token counters and its running and waiting gauges (read by
modeld.adapters.vllm). The idle decision and the rates are pure functions of two
readings."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Requests vLLM finished (any reason), and requests in its batches or queue now.
FINISHED = frozenset({"vllm:request_success_total"})
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
IN_FLIGHT = frozenset({RUNNING, WAITING})
# How full its KV cache is, 0 to 1 (older vLLMs called it gpu_cache_usage_perc).
KV_CACHE = frozenset({"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"})
# Tokens it generated (a counter).
TOKENS = frozenset({"vllm:generation_tokens_total"})


@dataclass(frozen=True)
class Activity:
    """One reading of a backend's request metrics, summed over its label sets."""

    finished: float
    in_flight: float
    tokens: float = 0.0
    # When it was read (monotonic seconds; 0 when unknown).
    at: float = 0.0
    # Of in_flight, those queued; and the KV cache's use (the highest of its label sets).
    waiting: float = 0.0
    kv_cache: float = 0.0


@dataclass(frozen=True)
class Rates:
    """What a model is doing: requests in flight, and requests finished and tokens
    generated per second between two readings (None until there are two)."""

    in_flight: float
    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    waiting: float = 0.0
    kv_cache: float = 0.0


def rates(previous: Activity | None, current: Activity | None) -> Rates | None:
    """The rates between two readings of the same backend; a counter that went back (a
    restarted backend) counts from zero."""
    if current is None:
        return None
    if previous is None or current.at <= previous.at:
        return Rates(current.in_flight, waiting=current.waiting, kv_cache=current.kv_cache)
    seconds = current.at - previous.at

    def per_second(now: float, before: float) -> float:
        return round(max(0.0, now - before if now >= before else now) / seconds, 2)

    return Rates(
        current.in_flight,
        per_second(current.finished, previous.finished),
        per_second(current.tokens, previous.tokens),
        current.waiting,
        current.kv_cache,
    )


def parse_activity(text: str) -> Activity | None:
    """The request counters in a Prometheus exposition; None if vLLM's are not there."""
    finished = in_flight = tokens = waiting = kv_cache = 0.0
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in FINISHED:
                finished += sample.value
                seen = True
            elif sample.name in IN_FLIGHT:
                in_flight += sample.value
                waiting += sample.value if sample.name == WAITING else 0.0
                seen = True
            elif sample.name in TOKENS:
                tokens += sample.value
            elif sample.name in KV_CACHE:
                kv_cache = max(kv_cache, sample.value)
    if not seen:
        return None
    return Activity(finished, in_flight, tokens, waiting=waiting, kv_cache=kv_cache)


def last_active(
    previous: Activity | None,
    current: Activity | None,
    since: float,
    now: float,
    probes: int = 0,
) -> float:
    """When the model was last seen busy: now if requests are in flight or more finished
    since the previous reading than the `probes` modeld sent meanwhile, else `since`
    unchanged. Unreadable metrics count as busy: a model is never unloaded on a guess."""
    if current is None or current.in_flight > 0:
        return now
    if previous is not None:
        finished = current.finished - previous.finished
        if finished < 0 or finished > probes:  # a restarted counter counts as busy
            return now
    return since


def progressed(
    previous: Activity | None, current: Activity | None, since: float, now: float
) -> float:
    """When a model's requests last moved: now if none is in flight, or a token was
    generated or a request finished since the previous reading; else `since`.
    Unreadable metrics say nothing: `since` unchanged."""
    if current is None:
        return since
    if current.in_flight == 0 or previous is None:
        return now
    if current.tokens != previous.tokens or current.finished != previous.finished:
        return now
    return since
