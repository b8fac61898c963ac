"""Leases: requests in flight on a model. A model with leases (or with acquires waiting
to be granted on it) is never stopped, parked or idle-unloaded to make room; a switch
that needs its memory drains it instead: new acquires for it wait at the gate, the
leases held end, then the switch goes on (or, past drain_timeout_s, fails with
models_busy having stopped nothing). Leases belong to the connection that took them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from modeld.core.errors import ModelsBusy, UnknownLease
from modeld.engine.model import Model

# The owner of the leases the daemon holds on the models it found running at startup.
ADOPTION = -1
# Leases whose requests their backend cut off, kept per model for `serving` (a death is
# seen a poll after it).
ENDED_KEPT = 32


@dataclass(frozen=True)
class Lease:
    """One request in flight on a model, held by one connection (or by the daemon
    itself: ADOPTION)."""

    id: str
    model: str
    owner: int
    since: float
    # The size of the request's body, as its caller said (a crash loop's reason names it).
    request_bytes: int | None = None
    # A standing lease: its holder's requests share it (a gateway's, for one model) and
    # it says how many are in flight (`update`); it protects the model while held.
    standing: bool = False
    in_flight: int = 1


class Leases:
    """Who holds which model, who is waiting to, and which models are draining."""

    def __init__(self, models: Mapping[str, Model]) -> None:
        # The live models: a model's lease count is kept on its Model (status shows it).
        self._models = models
        self._by_id: dict[str, Lease] = {}
        self._waiting: Counter[str] = Counter()
        self._draining: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        # Models found running at startup: the hold's lease and the timer that ends it.
        self._holds: dict[str, tuple[str, asyncio.TimerHandle]] = {}
        # Per model, the latest leases whose backend cut their request off: when, and
        # their request's size.
        self._ended: dict[str, deque[tuple[float, int | None]]] = {}
        # Standing leases held per model.
        self._standing: Counter[str] = Counter()

    def held(self, name: str) -> int:
        """Leases held on `name` now."""
        model = self._models.get(name)
        return model.usage.leases if model is not None else 0

    def protected(self, name: str) -> bool:
        """Not to be evicted: requests in flight (leases held), or acquires waiting to be
        granted on it or, for a base, on one of its adapters (their requests run in it)."""
        if self.held(name) > 0 or self._waiting[name] > 0:
            return True
        return any(
            m.usage.leases > 0 or self._waiting[m.name] > 0
            for m in self._models.values()
            if m.config.base == name
        )

    def standing(self, name: str) -> bool:
        """A standing lease is held on it (or, for a base, on one of its adapters): its
        holder may send it a request without asking, so it is drained before it is
        moved, even with nothing in flight (its holder lets go at the drain)."""
        if self._standing[name] > 0:
            return True
        return any(
            self._standing[m.name] > 0 for m in self._models.values() if m.config.base == name
        )

    def busy(self, name: str) -> bool:
        """Protected, or holding a standing lease: it is drained before it goes."""
        return self.protected(name) or self.standing(name)

    def grant(
        self, model: Model, owner: int, request_bytes: int | None = None, standing: bool = False
    ) -> Lease:
        """A new lease on `model` for connection `owner` (for a request of
        `request_bytes`, when its caller said; `standing`: shared by its holder's
        requests, one in flight now)."""
        lease = Lease(
            secrets.token_hex(12), model.name, owner, time.time(), request_bytes, standing
        )
        self._by_id[lease.id] = lease
        if standing:
            self._standing[model.name] += 1
        model.leased(+1)
        return lease

    def update(
        self, lease_id: str, owner: int | None, in_flight: int, cut_bytes: list[int]
    ) -> Lease:
        """A standing lease's requests in flight now, and the sizes of those its backend
        cut off (a crash loop's evidence, as a broken release's)."""
        lease = self._owned(lease_id, owner)
        if not lease.standing:
            raise UnknownLease(f"lease {lease_id!r} is not a standing lease", lease=lease_id)
        self._by_id[lease_id] = replace(lease, in_flight=in_flight)
        if (model := self._models.get(lease.model)) is not None:
            model.leased(in_flight - lease.in_flight)
        for size in cut_bytes:
            ended = self._ended.setdefault(lease.model, deque(maxlen=ENDED_KEPT))
            ended.append((time.monotonic(), size))
        self._tell()
        return self._by_id[lease_id]

    def _owned(self, lease_id: str, owner: int | None) -> Lease:
        lease = self._by_id.get(lease_id)
        if lease is None or (owner is not None and lease.owner != owner):
            raise UnknownLease(f"no lease {lease_id!r} held on this connection", lease=lease_id)
        return lease

    def release(self, lease_id: str, owner: int | None = None, broken: bool = False) -> Lease:
        """End a lease (only its own connection's, when `owner` is given; `broken`: its
        backend cut its request off)."""
        lease = self._owned(lease_id, owner)
        del self._by_id[lease_id]
        if lease.standing:
            self._standing[lease.model] -= 1
            if not self._standing[lease.model]:
                del self._standing[lease.model]
        if broken:
            ended = self._ended.setdefault(lease.model, deque(maxlen=ENDED_KEPT))
            ended.append((time.monotonic(), lease.request_bytes))
        if (model := self._models.get(lease.model)) is not None:  # a reload may remove it
            model.leased(-lease.in_flight)
        self._tell()
        return lease

    def serving(self, model: Model, within_s: float) -> tuple[int | None, ...]:
        """The sizes of the requests `model` was serving: its leases held now, and those
        of its last run whose backend cut them off in the last `within_s` (a request its
        backend died under ends at once at the gateway; the monitor sees the death up to
        a poll later)."""
        since = max(time.monotonic() - within_s, model.running_since or 0.0)
        name = model.name
        held: list[int | None] = []
        for lease in self._by_id.values():
            if lease.model != name:
                continue
            # A standing lease's requests: as many as it last said, sizes unknown.
            held += [None] * lease.in_flight if lease.standing else [lease.request_bytes]
        ended = [size for at, size in self._ended.get(name, ()) if at >= since]
        return (*held, *ended)

    def hold(self, model: Model, seconds: float) -> None:
        """Hold a lease on `model` for up to `seconds` (a model found running at
        startup: the requests it was serving when the last daemon stopped are invisible
        here until their routers take their leases again)."""
        lease = self.grant(model, ADOPTION)
        timer = asyncio.get_running_loop().call_later(seconds, self.end_hold, model.name)
        self._holds[model.name] = (lease.id, timer)

    def holding(self, name: str) -> bool:
        """Whether the daemon still holds `name` from startup."""
        return name in self._holds

    def end_hold(self, name: str) -> None:
        """End the startup hold on `name`, if it has one (its time is up, or its backend
        says it serves nothing)."""
        held = self._holds.pop(name, None)
        if held is None:
            return
        lease_id, timer = held
        timer.cancel()
        with contextlib.suppress(UnknownLease):
            self.release(lease_id)

    def close(self) -> None:
        """Drop the timers of the holds still running (the daemon stops)."""
        for _, timer in self._holds.values():
            timer.cancel()
        self._holds.clear()

    def release_owner(self, owner: int) -> int:
        """End every lease a connection holds (it closed); how many."""
        mine = [lease.id for lease in self._by_id.values() if lease.owner == owner]
        for lease_id in mine:
            self.release(lease_id)
        return len(mine)

    @contextlib.contextmanager
    def queued(self, model: Model) -> Iterator[None]:
        """An acquire for `model` from its start to its lease or error (status
        shows how many wait); unlike `waiting`, it does not protect the model."""
        model.queued(+1)
        try:
            yield
        finally:
            model.queued(-1)

    @contextlib.contextmanager
    def waiting(self, name: str) -> Iterator[None]:
        """An acquire in flight for `name`: protects the model once it runs."""
        self._waiting[name] += 1
        try:
            yield
        finally:
            self._waiting[name] -= 1
            self._tell()

    async def gate(self, name: str) -> None:
        """Return once `name` is not draining: new acquires wait while it drains (an
        adapter's, also while its base drains)."""
        while True:
            drain = self._draining.get(name)
            if drain is None:
                drain = self._draining.get(self._drained_as(name))
            if drain is None:
                return
            await drain.wait()

    def _drained_as(self, name: str) -> str:
        """The name whose drain closes the gate on `name` besides its own: its base's."""
        model = self._models.get(name)
        return (model.config.base or name) if model is not None else name

    def begin_drain(self, names: Iterable[str]) -> list[str]:
        """Close the gate on `names`; the ones this call closed (to reopen later)."""
        closed = [name for name in names if name not in self._draining]
        for name in closed:
            self._draining[name] = asyncio.Event()
        return closed

    def end_drain(self, names: Iterable[str]) -> None:
        """Open the gate on `names` again: waiting acquires go on."""
        for name in names:
            if (drain := self._draining.pop(name, None)) is not None:
                drain.set()

    def draining(self, name: str) -> bool:
        """Whether new acquires for `name` wait."""
        return name in self._draining or self._drained_as(name) in self._draining

    async def drained(self, names: list[str], timeout: float) -> None:
        """Return once no lease is held and no acquire waits on any of `names`;
        ModelsBusy naming them and their leases after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while any(self.busy(name) for name in names):
                    changed = self._changed
                    await changed.wait()
        except TimeoutError:
            busy = {name: self.held(name) for name in names if self.busy(name)}
            raise ModelsBusy(
                f"models still serving requests after {timeout:g}s: "
                + ", ".join(f"{name} ({count} leases)" for name, count in busy.items())
                + "; nothing was stopped (force evicts anyway)",
                busy=busy,
                drain_timeout_s=timeout,
            ) from None

    def _tell(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
