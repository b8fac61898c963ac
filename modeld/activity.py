"""Is a model being used? vLLM's `/metrics` says: its finished-request counter and its
running and waiting gauges. The idle decision is a pure function of two readings."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
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


class ActivityProbe:
    """GETs `<endpoint>/metrics` with one shared HTTP session."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def read(self, endpoint: str) -> Activity | None:
        """One reading, or None if `/metrics` cannot be read or lacks vLLM's metrics."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{endpoint}/metrics") as response:
                if response.status != 200:
                    return None
                text = await response.text()
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            return None
        try:
            return parse_activity(text)
        except ValueError:
            return None

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
