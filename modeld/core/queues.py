"""The one bounded queue for whatever is pushed to a reader that may be slow (events,
followed log lines, what a client receives): the producer never waits; when the queue
is full the oldest item goes, and the reader is told how many went."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldest(Generic[T]):
    """A bounded FIFO that never blocks its producer."""

    def __init__(self, limit: int) -> None:
        # The bound is kept by offer(); the queue itself is unbounded so that finish()
        # can always add its one last item.
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self._limit = limit
        self._dropped = 0

    def offer(self, item: T) -> None:
        """Queue `item`; when full, the oldest item goes first (and is counted)."""
        if self._queue.qsize() >= self._limit:
            self._queue.get_nowait()
            self._dropped += 1
        self._queue.put_nowait(item)

    def finish(self, item: T) -> None:
        """Queue `item` as the last, beyond the bound: an end marker costs no item."""
        self._queue.put_nowait(item)

    async def get(self) -> T:
        """The oldest item, once there is one."""
        return await self._queue.get()

    def take_dropped(self) -> int:
        """How many items went unread since the last call (and start counting again)."""
        dropped, self._dropped = self._dropped, 0
        return dropped
