"""What requests waiting at this host may hold, shared so that no key takes another's.

A request that waits for its model (a load, a wake, its turn) holds a place in the
queue and its body as sent, from the first byte read until its lease is granted. Both
are bounded for the gateway as a whole and split among the keys:

- the inference keys together hold at most the bound, and each at most its share: the
  bound divided by the number of inference keys (never less than `floor`: one place, or
  one largest body). A key that floods is refused past its share (429, Retry-After)
  while every other key still finds its own share free;
- admin keys (everyone, on a gateway without keys) hold up to the bound on an account
  of their own: no inference key can lock an operator out;
- past the bound for the gateway, 503 with Retry-After, so a router tries another host.

Counts are kept per key name (the configured ones), so this state is bounded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from modeld.gateway.auth import Identity
from modeld.gateway.errors import GatewayError


@dataclass(frozen=True)
class Bound:
    """What a FairShares counts and how its refusals read."""

    # "places in the queue", "bytes of request bodies"
    unit: str
    # The setting that bounds it, named in refusals.
    setting: str
    # Error kinds: the gateway's bound (503) and a key's share (429).
    full: str
    key_full: str
    retry_after_s: int


QUEUE = Bound("places in the queue", "max_queue", "queue_full", "key_queue_full", 5)
BODIES = Bound("bytes of request bodies", "max_waiting_bytes", "bodies_full", "key_bodies_full", 5)


class FairShares:
    """One bound (None: none), with a share per inference key and an admins' account."""

    def __init__(
        self, bound: Bound, limit: int | None, floor: int, inference_keys: Callable[[], int]
    ) -> None:
        self.bound = bound
        self.limit = limit
        self._floor = floor
        self._inference_keys = inference_keys
        self._per_key: Counter[str] = Counter()
        self._inference = 0
        self._admins = 0

    @property
    def held(self) -> int:
        """What all requests hold now."""
        return self._inference + self._admins

    def share(self) -> int | None:
        """What one inference key may hold (None: no bound)."""
        if self.limit is None:
            return None
        keys = max(1, self._inference_keys())
        return min(self.limit, max(self._floor, self.limit // keys))

    def take(self, caller: Identity, amount: int) -> None:
        """Count `amount` more for `caller`; GatewayError (nothing counted) when that
        passes its share or the gateway's bound."""
        if self.limit is not None:
            self._check(caller, amount, self.limit)
        if caller.admin:
            self._admins += amount
        else:
            self._inference += amount
            self._per_key[caller.name] += amount

    def give(self, caller: Identity, amount: int) -> None:
        """Count `amount` less for `caller`."""
        if caller.admin:
            self._admins -= amount
            return
        self._inference -= amount
        self._per_key[caller.name] -= amount
        if self._per_key[caller.name] <= 0:
            del self._per_key[caller.name]

    def _check(self, caller: Identity, amount: int, limit: int) -> None:
        bound = self.bound
        if not caller.admin:
            share = self.share()
            mine = self._per_key[caller.name]
            if share is not None and mine + amount > share:
                raise self._refusal(
                    bound.key_full,
                    f"the key {caller.name} already holds {mine} {bound.unit} here, and its "
                    f"share is {share} ({bound.setting} shared among the inference keys)",
                    share,
                )
        held = self._admins if caller.admin else self._inference
        if held + amount > limit:
            raise self._refusal(
                bound.full,
                f"requests waiting at this host hold {held} {bound.unit} ({bound.setting} is "
                f"{limit}): try another host",
                limit,
            )

    def _refusal(self, kind: str, message: str, limit: int) -> GatewayError:
        refusal = GatewayError(
            kind, f"{message}, or again in {self.bound.retry_after_s}s", limit=limit
        )
        refusal.retry_after = self.bound.retry_after_s
        return refusal


class Hold:
    """What one request holds of a FairShares; given back whole, once, by release()."""

    def __init__(self, shares: FairShares, caller: Identity) -> None:
        self._shares = shares
        self._caller = caller
        self.amount = 0

    def grow(self, amount: int) -> None:
        """Hold `amount` more (GatewayError past the caller's share or the bound)."""
        self._shares.take(self._caller, amount)
        self.amount += amount

    def release(self) -> None:
        """Give back all that is held (again: nothing)."""
        if self.amount:
            self._shares.give(self._caller, self.amount)
            self.amount = 0
