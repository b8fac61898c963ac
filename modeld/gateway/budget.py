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

WINDOW_S = 60.0


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
