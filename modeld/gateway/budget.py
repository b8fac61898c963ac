"""How many loads and wakes each non-admin key's requests may cause: a sliding minute.

Alternating two models that cannot share the GPU costs a cold load per request; one
careless script could keep the whole host loading. A key past its budget is refused
(429 `load_rate_limited`, Retry-After: when its oldest load leaves the minute) for a
request that would cause one more; requests for models that run, or are loading
already, are always served. Admin keys are not budgeted. One deque per key, of at most
`per_minute` times: the keys are the configured ones, so memory is bounded.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from modeld.gateway.errors import GatewayError

WINDOW_S = 60.0
# When a host whose queue is full is worth asking again.
QUEUE_RETRY_S = 5


class LoadBudget:
    """Loads caused per key name in the last minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._loads: dict[str, deque[float]] = {}

    @property
    def limited(self) -> bool:
        """Whether there is a budget at all (0: no limit)."""
        return self.per_minute > 0

    def spent(self, key: str) -> int | None:
        """None while `key` may cause another load; else the seconds until it may (at
        least 1)."""
        now = self._clock()
        loads = self._loads.setdefault(key, deque())
        while loads and loads[0] <= now - WINDOW_S:
            loads.popleft()
        if len(loads) >= self.per_minute:
            return max(1, math.ceil(loads[0] + WINDOW_S - now))
        return None

    def take(self, key: str) -> int | None:
        """Count one more load for `key` and return None; or, its budget spent, count
        nothing and return the seconds until it may cause one again (at least 1)."""
        retry = self.spent(key)
        if retry is None:
            self._loads[key].append(self._clock())
        return retry


class WaitQueue:
    """Requests waiting at this host for a load or their turn, bounded (`max_queue`):
    past it a request is refused at once, so a router (a GIE endpoint picker) tries
    another host instead of queueing here."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.waiting = 0

    def join(self) -> Callable[[], None]:
        """Take a place; the function given back leaves it (once, however often called).
        GatewayError `queue_full` (503, Retry-After) when there is none."""
        if self.limit is not None and self.waiting >= self.limit:
            refusal = GatewayError(
                "queue_full",
                f"{self.waiting} requests already wait at this host for a load or their "
                "turn (max_queue): try another",
                limit=self.limit,
            )
            refusal.retry_after = QUEUE_RETRY_S
            raise refusal
        self.waiting += 1
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self.waiting -= 1

        return leave
