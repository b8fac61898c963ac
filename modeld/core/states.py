"""Model states and the one table of transitions allowed between them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """Where a model's backend is in its life."""

    STOPPED = "stopped"
    LOADING = "loading"
    RUNNING = "running"
    STOPPING = "stopping"
    # Parked with vLLM's sleep mode: the process lives, its weights are in host RAM.
    SLEEPING = "sleeping"
    FAILED = "failed"


S = State

# Every allowed move, and nothing else. Why each exists:
#   stopped->loading   start requested, or a backend found started behind modeld's back
#   stopped->running   not allowed: health is only ever reached through loading
#   loading->running   health answered 200
#   loading->failed    backend exited, health 503, deadline passed, or start itself failed
#   loading->stopping  a stop (or an eviction) arrived while it loaded
#   loading->sleeping  a backend found at startup (or woken behind modeld's back) answers
#                      health but says it is asleep
#   running->stopping  stop or eviction
#   running->sleeping  parked: /sleep answered and /is_sleeping says so
#   running->failed    the backend died or exited without being asked to
#   sleeping->loading  waking it (POST /wake_up), or found awake again
#   sleeping->stopping stopped while parked (an eviction, idle unload or an explicit stop)
#   sleeping->failed   the parked backend died
#   stopping->stopped  the backend is gone
#   stopping->failed   the runtime could not stop it
#   failed->loading    retried start, or found running again behind modeld's back
#   failed->stopping   clean up what a failed backend left (a container that still runs)
#   failed->stopped    an explicit stop of a model whose backend is already gone
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.LOADING}),
    S.LOADING: frozenset({S.RUNNING, S.FAILED, S.STOPPING, S.SLEEPING}),
    S.RUNNING: frozenset({S.STOPPING, S.FAILED, S.SLEEPING}),
    S.SLEEPING: frozenset({S.LOADING, S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.FAILED: frozenset({S.LOADING, S.STOPPING, S.STOPPED}),
}

# States in which a backend may hold GPU memory (a sleeping one keeps a residual).
ACTIVE: frozenset[State] = frozenset({S.LOADING, S.RUNNING, S.STOPPING, S.SLEEPING})


class IllegalTransition(Exception):
    """A transition outside the table: a bug in modeld, never a user error."""


def check_transition(current: State, new: State) -> None:
    """Raise IllegalTransition unless the table allows `current -> new`."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current} -> {new} is not an allowed transition")


@dataclass(frozen=True)
class Failure:
    """Why a model failed: a message, and the backend's exit code and last lines if any."""

    reason: str
    exit_code: int | None = None
    last_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelStatus:
    """A model's state, when it entered it (wall clock), and why it failed if it did."""

    state: State
    since: float
    failure: Failure | None = None
