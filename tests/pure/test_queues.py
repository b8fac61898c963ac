"""The one bounded queue for slow readers: the producer never waits, the oldest items
go, the reader is told how many, and an end marker costs no item."""

from __future__ import annotations

from modeld.core.queues import DropOldest


async def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    """Past the bound the oldest go; the count is handed over once."""
    queue: DropOldest[int] = DropOldest(3)
    for item in range(10):
        queue.offer(item)  # never blocks
    assert [await queue.get() for _ in range(3)] == [7, 8, 9]
    assert queue.take_dropped() == 7
    assert queue.take_dropped() == 0


async def test_the_end_marker_is_kept_beyond_the_bound() -> None:
    """finish() adds its item even when full, and drops nothing for it."""
    queue: DropOldest[int | None] = DropOldest(2)
    for item in range(5):
        queue.offer(item)
    queue.finish(None)
    assert [await queue.get() for _ in range(3)] == [3, 4, None]
    assert queue.take_dropped() == 3
