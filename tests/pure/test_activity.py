"""A model's activity from two readings of vLLM's /metrics: requests and tokens per
second, counters that restart, and no rate from a single reading."""

from __future__ import annotations

from modeld.core.activity import Activity, Rates, parse_activity, rates

METRICS = """\
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 1.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="m"} 40.0
vllm:request_success_total{finished_reason="length",model_name="m"} 2.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="m"} 1234.0
"""


def test_the_counters_and_gauges_are_read() -> None:
    """Finished requests and generated tokens summed over labels; running and waiting;
    the KV cache's use."""
    assert parse_activity(METRICS) == Activity(
        finished=42.0, in_flight=3.0, tokens=1234.0, waiting=1.0, kv_cache=0.25
    )


def test_rates_between_two_readings() -> None:
    """10 requests and 500 tokens in 5 s: 2 req/s, 100 tok/s; one reading gives only
    what is in flight; a backend that restarted counts from its new zero."""
    first = Activity(finished=10, in_flight=1, tokens=100, at=100.0)
    second = Activity(finished=20, in_flight=0, tokens=600, at=105.0)
    assert rates(first, second) == Rates(0, 2.0, 100.0)
    assert rates(None, second) == Rates(0)
    restarted = Activity(finished=3, in_flight=0, tokens=50, at=110.0)
    assert rates(second, restarted) == Rates(0, 0.6, 10.0)
    assert rates(second, None) is None
