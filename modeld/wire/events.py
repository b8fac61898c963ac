"""Live events, typed: one class per kind, told apart by `type` (a discriminated union),
and the bus that numbers them and fans them out to subscribers.

The daemon publishes them (`subscribe`), the gateway relays them (`GET /events`, adding
its own two kinds), and modelctl and the page read their fields. Every field is always
on the wire (null when it does not apply), so a reader never guesses at a key.

A slow subscriber never holds up the publisher or the others: when its queue is full the
oldest event is dropped and counted, and the next event it receives says how many.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from modeld.core.queues import DropOldest
from modeld.wire.results import MemoryInfo

QUEUE_LIMIT = 1000


class _Event(BaseModel):
    # Built once, read by many subscribers: never changed (a copy carries seq and time).
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Set by the bus: its number (gaps show events lost) and when it was published.
    seq: int = 0
    time: float = 0.0
    # Set for a subscriber whose queue overflowed: how many events it lost before this.
    dropped_before: int | None = None


class StateChanged(_Event):
    """A model changed state (with the failure, when it failed)."""

    type: Literal["state"] = "state"
    model: str
    from_state: str
    to_state: str
    reason: str
    failure: str | None = None
    exit_code: int | None = None


class SwitchPlanned(_Event):
    """A switch's plan: what it stops and parks, the memory it counted, and the eviction
    policy that chose."""

    type: Literal["switch.plan"] = "switch.plan"
    model: str
    stop: list[str]
    park: list[str]
    memory_info: MemoryInfo
    policy: str


class SwitchStopped(_Event):
    """A switch to `model` stopped another model."""

    type: Literal["switch.stopped"] = "switch.stopped"
    model: str
    stopped: str


class SwitchParked(_Event):
    """A switch to `model` parked another model (sleep mode)."""

    type: Literal["switch.parked"] = "switch.parked"
    model: str
    parked: str


class RoomReady(_Event):
    """The driver shows the room a switch made: free GB per device."""

    type: Literal["switch.room_ready"] = "switch.room_ready"
    model: str
    free_gb: dict[str, float]


class Waking(_Event):
    """A parked model is being woken."""

    type: Literal["switch.waking"] = "switch.waking"
    model: str


class ParkFailed(_Event):
    """A model could not be parked: it was stopped instead."""

    type: Literal["park.failed"] = "park.failed"
    model: str
    error: str


class WakeFailed(_Event):
    """A parked model would not wake: `fallback` instead."""

    type: Literal["wake.failed"] = "wake.failed"
    model: str
    error: str
    fallback: str


class IdleUnloaded(_Event):
    """A model idle past its idle_unload_after_s was stopped or parked."""

    type: Literal["idle.unloaded"] = "idle.unloaded"
    model: str
    action: str


class Draining(_Event):
    """A model waits for its requests in flight (leases) before it goes."""

    type: Literal["drain"] = "drain"
    model: str
    leases: int


class DeviceMemory(BaseModel):
    """One GPU's memory in a `gpu.memory` event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    used_gb: float
    free_gb: float


class GpuMemory(_Event):
    """A device's use moved by a step or more (memory freed some time after a stop)."""

    type: Literal["gpu.memory"] = "gpu.memory"
    devices: list[DeviceMemory]


class GpuHealthChanged(_Event):
    """A device's health moved (ok, degraded, unusable), with why; or an operator
    cleared it."""

    type: Literal["gpu.health"] = "gpu.health"
    device: int
    from_health: str
    to_health: str
    reasons: list[str]
    # The models with a backend on it now (they keep running; the operator decides).
    models: list[str]


class ConfigReloaded(_Event):
    """The config file was read again: the models it added and removed."""

    type: Literal["config.reloaded"] = "config.reloaded"
    added: list[str]
    removed: list[str]


class GatewayConnected(_Event):
    """(The gateway's stream only) it reached modeld."""

    type: Literal["gateway.connected"] = "gateway.connected"
    socket: str


class GatewayDisconnected(_Event):
    """(The gateway's stream only) it lost modeld; it tries again."""

    type: Literal["gateway.disconnected"] = "gateway.disconnected"
    reason: str


Event = Annotated[
    StateChanged
    | SwitchPlanned
    | SwitchStopped
    | SwitchParked
    | RoomReady
    | Waking
    | ParkFailed
    | WakeFailed
    | IdleUnloaded
    | Draining
    | GpuMemory
    | GpuHealthChanged
    | ConfigReloaded
    | GatewayConnected
    | GatewayDisconnected,
    Field(discriminator="type"),
]
EVENT: TypeAdapter[Event] = TypeAdapter(Event)
_STAMPS = ("type", "seq", "time", "dropped_before")


class OtherEvent(BaseModel):
    """An event this version does not read (a newer daemon's kind, or one missing a
    field): passed on and shown as its fields, never dropped or guessed at."""

    model_config = ConfigDict(frozen=True)

    type: str
    seq: int = 0
    time: float = 0.0
    dropped_before: int | None = None
    fields: dict[str, Any] = {}


# What a reader of a stream may be given.
AnyEvent = Event | OtherEvent


def read_event(data: Any) -> AnyEvent:
    """An event as sent, typed (an OtherEvent when this version does not read it)."""
    try:
        return EVENT.validate_python(data)
    except ValidationError:
        sent = data if isinstance(data, dict) else {}
        seq, at, dropped = sent.get("seq"), sent.get("time"), sent.get("dropped_before")
        return OtherEvent(
            type=str(sent.get("type", "event")),
            seq=seq if isinstance(seq, int) else 0,
            time=at if isinstance(at, int | float) else 0.0,
            dropped_before=dropped if isinstance(dropped, int) else None,
            fields={str(k): v for k, v in sent.items() if k not in _STAMPS},
        )


def event_json(event: AnyEvent) -> dict[str, Any]:
    """The event as JSON-ready data, every field present (another kind's as sent)."""
    if isinstance(event, OtherEvent):
        stamps = event.model_dump(mode="json", exclude={"fields"})
        return {**event.fields, **stamps}
    return event.model_dump(mode="json")


class Subscription:
    """One subscriber's queue of events."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue: DropOldest[AnyEvent] = DropOldest(limit)

    def offer(self, event: AnyEvent) -> None:
        """Queue an event, dropping the oldest when full (never blocks)."""
        self._queue.offer(event)

    async def next(self) -> AnyEvent:
        """The next event, with how many were dropped before it, if any."""
        event = await self._queue.get()
        if dropped := self._queue.take_dropped():
            event = event.model_copy(update={"dropped_before": dropped})
        return event


class EventBus:
    """Tells its listeners (parts of the same process, at once) of each event, and numbers
    events and fans them out to subscriptions (each its own bounded queue)."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[Event], None]] = []
        self._sequence = itertools.count(1)

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` with each event published here, as it is published, in the
        order listeners were added (what counts events: the engine's metrics)."""
        self._listeners.append(listener)

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

    def forward(self, event: AnyEvent) -> None:
        """Send an event numbered elsewhere (the daemon's, relayed by the gateway) as it is."""
        for subscription in self._subscriptions:
            subscription.offer(event)

    def publish(self, event: Event) -> None:
        """Tell the listeners of `event`; number it, stamp its time and send it to every
        subscriber."""
        for listener in self._listeners:
            listener(event)
        if not self._subscriptions:
            return
        stamped = event.model_copy(update={"seq": next(self._sequence), "time": time.time()})
        for subscription in self._subscriptions:
            subscription.offer(stamped)
