"""Lease batching: the gateway's requests for one model share one standing lease from
the daemon, instead of a round trip to acquire and another to release per request.

The first request for a model acquires a standing lease (`acquire` with `standing`);
the requests that come while it is held join it locally. It is kept for LINGER_S after
the last of them ends, so that the next one pays no round trip either, and given back at
once when the daemon drains the model (its `drain` event) or says it left `running`.
The daemon hears the count of requests in flight, the requests served (its demand and
LRU clock count each, as an acquire's) and the sizes of any its backend cut off (a crash
loop's evidence) in a `lease_update` notification: at once when a request begins on a
lease the daemon counts none in flight on, or one is cut off; else at most REPORT_S
later, the end of the last one too (so the daemon counts more in flight than there are
for up to REPORT_S, never fewer, and requests one after another send nothing each), and
before any acquire of the gateway's (a switch it causes is planned from exact counts).
What stays exact (docs/gateway.md): a model with a request in flight holds a lease (the
standing one protects it while held, whatever its count), so it is never stopped,
parked or unloaded under a request; a switch that needs it drains it, and the gateway
lets it go the moment its last request ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from modeld.client import Client
from modeld.wire.results import LeaseResult

# A standing lease kept this long after its model's last request (the next one joins it).
LINGER_S = 1.0
# Counts reach the daemon at most this late (the page's requests in flight, its demand).
REPORT_S = 0.05


class SharedLease(Protocol):
    """The daemon lease a Standing shares (link.py's Lease)."""

    model: str
    granted: LeaseResult

    @property
    def lost(self) -> bool:
        """Its connection is gone (the daemon restarted) and it is not yet renewed."""
        ...

    @property
    def client(self) -> Client:
        """The connection it is held on."""
        ...

    async def release(self) -> None:
        """Give it back."""
        ...


class Held:
    """One request's hold on a model: the grant it runs under, and whether its backend
    cut it off (set by the proxy; counted at the lease's next update)."""

    __slots__ = ("broken", "granted")

    def __init__(self, granted: LeaseResult) -> None:
        self.granted = granted
        self.broken = False


class Standing:
    """A daemon lease the gateway's requests for one model share, and their counts."""

    def __init__(self, lease: SharedLease) -> None:
        self.lease = lease
        self.in_flight = 1
        # Requests in flight as the daemon last heard (its acquire counted one).
        self.reported = 1
        self.served = 0
        self.cut: list[int] = []
        # No request joins it any more: it ends with its last one.
        self.closing = False
        self.linger: asyncio.TimerHandle | None = None


class StandingLeases:
    """Each model's standing lease, the requests on each, and their reports."""

    def __init__(
        self,
        held: set[Any],  # the link's Leases
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        bases: Callable[[], dict[str, str]],
    ) -> None:
        # The link's leases to renew after a daemon restart (a standing one is among them).
        self._held = held
        self._spawn = spawn
        self._bases = bases
        self._by_model: dict[str, Standing] = {}
        self._live: set[Standing] = set()
        self._report: asyncio.TimerHandle | None = None

    def join(self, model: str, running: bool) -> Standing | None:
        """A request joins `model`'s standing lease (no round trip); None when there is
        none to join (none held, lost, closing, or the model is not running)."""
        standing = self._by_model.get(model)
        if standing is None or standing.closing or standing.lease.lost or not running:
            return None
        standing.in_flight += 1
        standing.served += 1
        if standing.linger is not None:
            standing.linger.cancel()
            standing.linger = None
        if standing.reported == 0:
            # The daemon counts none in flight: it hears of this one at once, so that it
            # never counts fewer than one while any is (its plans protect the model).
            self._send(standing)
        else:
            self._report_soon()
        return standing

    def adopt(self, lease: SharedLease) -> Standing:
        """A standing lease just granted for a request: the model's, unless it has one
        already (then this one ends with its request)."""
        standing = Standing(lease)
        self._live.add(standing)
        self._held.add(lease)
        current = self._by_model.get(lease.model)
        if current is None or current.closing or current.lease.lost:
            self._by_model[lease.model] = standing
        else:
            standing.closing = True
        return standing

    def leave(self, standing: Standing, held: Held, request_bytes: int | None) -> None:
        """A request on it ended (cut off by its backend: `held.broken`)."""
        standing.in_flight -= 1
        if held.broken:
            standing.cut.append(request_bytes or 0)
            del standing.cut[:-64]  # (the most an update carries)
            self._send(standing)  # a crash loop's evidence: said now, not at the next report
        else:
            # Even the last one's end waits for the next report: back-to-back requests
            # then cost no notification each, and the daemon meanwhile counts one more
            # than is in flight, never fewer (its own switches read the counts exact:
            # `report_now` goes before each acquire).
            self._report_soon()
        if standing.in_flight:
            return
        if standing.closing:
            self._end(standing)
        else:
            loop = asyncio.get_running_loop()
            standing.linger = loop.call_later(LINGER_S, self._lingered, standing)

    def closing(self, model: str) -> None:
        """The daemon drains `model` (or it left running): its standing leases, and its
        adapters', take no new request and end with their last one."""
        bases = self._bases()
        for standing in list(self._live):
            name = standing.lease.model
            if name != model and bases.get(name) != model:
                continue
            standing.closing = True
            if self._by_model.get(name) is standing:
                del self._by_model[name]
            if not standing.in_flight:
                self._end(standing)

    def renewed(self) -> None:
        """Leases were taken again after a daemon restart (each acquire counted one in
        flight): the real counts go at the next report; idle ones lost are dropped."""
        for standing in list(self._live):
            if standing.lease.lost and not standing.in_flight:
                self._end(standing)
            else:
                standing.reported = 1
        self._report_soon()

    def _lingered(self, standing: Standing) -> None:
        standing.linger = None
        if not standing.in_flight:
            self._end(standing)

    def _end(self, standing: Standing) -> None:
        if standing.linger is not None:
            standing.linger.cancel()
            standing.linger = None
        if self._by_model.get(standing.lease.model) is standing:
            del self._by_model[standing.lease.model]
        self._live.discard(standing)
        self._held.discard(standing.lease)
        self._send(standing)  # its last counts first, on the same connection
        self._spawn(standing.lease.release())

    def report_now(self) -> None:
        """Send every count not yet reported (before an acquire on the same connection:
        the switch it may cause is planned from exact counts)."""
        if self._report is not None:
            self._report.cancel()
        self._send_all()

    def _report_soon(self) -> None:
        if self._report is None:
            self._report = asyncio.get_running_loop().call_later(REPORT_S, self._send_all)

    def _send_all(self) -> None:
        self._report = None
        for standing in self._live:
            self._send(standing)

    @staticmethod
    def _send(standing: Standing) -> None:
        if standing.in_flight == standing.reported and not standing.served and not standing.cut:
            return
        client = standing.lease.client
        sent = client.notify(
            "lease_update",
            lease=standing.lease.granted.lease,
            in_flight=standing.in_flight,
            served=standing.served,
            cut_bytes=standing.cut,
        )
        # Not sent (gone with the daemon, to be renewed, or it is not reading): kept for
        # the next report.
        if sent:
            standing.reported, standing.served, standing.cut = standing.in_flight, 0, []
