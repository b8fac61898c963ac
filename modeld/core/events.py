"""Live events for `subscribe`: every subscriber gets its own bounded queue.

A slow subscriber never holds up the daemon or the others: when its queue is full the
oldest event is dropped and counted, and the next event it receives says how many.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from modeld.core.queues import DropOldest

QUEUE_LIMIT = 1000


class Subscription:
    """One subscriber's queue of events."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue: DropOldest[dict[str, Any]] = DropOldest(limit)

    def offer(self, event: dict[str, Any]) -> None:
        """Queue an event, dropping the oldest when full (never blocks)."""
        self._queue.offer(event)

    async def next(self) -> dict[str, Any]:
        """The next event, with how many were dropped before it, if any."""
        event = await self._queue.get()
        if dropped := self._queue.take_dropped():
            event = {**event, "dropped_before": dropped}
        return event


class EventBus:
    """Fans events out to subscriptions."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._sequence = itertools.count(1)

    def subscribe(self) -> Subscription:
        """A new subscription, receiving events from now on."""
        subscription = Subscription()
        self._subscriptions.add(subscription)
        return subscription

    @property
    def count(self) -> int:
        """How many subscriptions are live."""
        return len(self._subscriptions)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to `subscription`."""
        self._subscriptions.discard(subscription)

    def forward(self, event: dict[str, Any]) -> None:
        """Send an event made elsewhere (the daemon's, relayed by the gateway) as it is."""
        for subscription in self._subscriptions:
            subscription.offer(event)

    def publish(self, kind: str, **fields: Any) -> None:
        """Send an event to every subscriber, numbered so gaps are visible."""
        if not self._subscriptions:
            return
        event = {"seq": next(self._sequence), "type": kind, "time": time.time(), **fields}
        for subscription in self._subscriptions:
            subscription.offer(event)
