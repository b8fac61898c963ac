"""What operations answer, typed: the engine returns these and the daemon's method table
sends them as JSON leaving out the fields an outcome never set, so each answer keeps
the seed's shape (an `already_loaded` switch has no memory figures); `answer()` is that
JSON, which the engine also logs and puts in errors' data."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from modeld.wire.history import HistoryEntry


class Result(BaseModel):
    """An operation's answer: built whole (a copy when a later step adds to it), never
    changed once made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def answer(self) -> dict[str, Any]:
        """The JSON-ready answer: only the fields this outcome set."""
        return self.model_dump(mode="json", exclude_unset=True)


class MemoryInfo(Result):
    """The memory figures a switch planned with (GB; per device as strings of indexes)."""

    required_gb: float | None
    available_before_gb: float | None
    freed_gb: float
    device: int | None = None
    source: str | None = None
    per_device: dict[str, dict[str, float]] | None = None


class SwitchResult(Result):
    """`switch`, `start`, `restart`: the seed's fields, then how the load or wake went."""

    status: Literal["already_loaded", "success", "restarted"]
    model: str
    message: str | None = None
    unloaded_models: list[str] | None = None
    estimated_load_time_seconds: float | None = None
    memory_info: MemoryInfo | None = None
    parked_models: list[str] | None = None
    woke: bool | None = None
    wake_seconds: float | None = None
    wake_fallback: str | None = None
    state: str | None = None
    health: str | None = None
    load_seconds: float | None = None


class StopResult(Result):
    """`stop`."""

    status: Literal["stopped", "already_stopped"]
    model: str


class LeaseResult(Result):
    """`acquire`: a lease on a model that runs and answers, and where to send requests."""

    lease: str
    model: str
    endpoint: str
    served_model_name: str
    state: str
    leases: int
    waited_seconds: float


class NotLoaded(Result):
    """`acquire` with `load: false` refused (`would_load`, an error on the wire): `model`
    would need a load or a wake of its own. The client reads it from that error, so a
    router's budget is an answer it reads, not an exception it catches."""

    model: str
    state: str
    message: str


class ReleaseResult(Result):
    """`release`."""

    released: bool
    model: str
    leases: int


class LeaseUpdated(Result):
    """`lease_update`: a standing lease's requests in flight, as its holder counts them."""

    model: str
    leases: int


class ReloadResult(Result):
    """`reload`: what the new config changed."""

    status: Literal["reloaded"]
    added: list[str]
    removed: list[str]
    unmanaged: list[str]
    changed: list[str]
    changed_at_next_start: list[str]
    requires_restart: list[str]


class LogsResult(Result):
    """`logs`: a backend's last lines."""

    model: str
    lines: list[str]


class PlanCandidate(Result):
    """A model the planner could stop or park, with the figures it weighed."""

    name: str
    held_gb: float
    reload_seconds: float
    demand: float
    movable: bool
    can_park: bool


PlanAction = Literal["none", "join_load", "start", "wake", "wait_for_loads", "drain", "refuse"]


class PlanResult(Result):
    """`plan`: what a switch to `model` would do now, and why; nothing is changed."""

    model: str
    action: PlanAction
    message: str
    stop: list[str] = []
    park: list[str] = []
    busy: list[str] = []
    memory_info: MemoryInfo | None = None
    estimated_seconds: float | None = None
    policy: str
    candidates: list[PlanCandidate] = []


class Pong(Result):
    """`ping`."""

    pong: Literal[True]
    version: str


class Subscribed(Result):
    """`subscribe`: events follow as `event` notifications (`already`: it was on)."""

    subscribed: Literal[True]
    already: bool


class Following(Result):
    """`logs` with `follow`: lines follow as `log` notifications."""

    model: str
    following: Literal[True]
    already: bool


class HistoryResult(Result):
    """`history`: what was done to models and why, oldest first."""

    entries: list[HistoryEntry]
