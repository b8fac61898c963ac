"""The Runtime protocol and what it reports about a backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from modeld.core.config import ModelConfig

LOG_LINES = 20
# Output lines are kept and passed on cut to this length (a backend may print megabytes
# without a newline).
MAX_LINE_CHARS = 4096


class BackendState(StrEnum):
    """What the runtime says about a backend, independent of its health."""

    ABSENT = "absent"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True)
class BackendStatus:
    """A backend as the runtime sees it: state, host PID, exit code, container id."""

    state: BackendState
    pid: int | None = None
    exit_code: int | None = None
    id: str | None = None
    started_at: str | None = None


class Runtime(Protocol):
    """Starts and stops one kind of backend; the only code that touches its engine."""

    name: str

    async def start(self, model: ModelConfig) -> BackendStatus:
        """Start the model's backend; LoadFailed if it cannot be started."""
        ...

    async def stop(self, model: ModelConfig) -> None:
        """Stop the backend and everything it spawned; a no-op when it is not running."""
        ...

    async def inspect(self, model: ModelConfig) -> BackendStatus:
        """The backend's current state; RuntimeUnavailable if the engine cannot be reached."""
        ...

    async def wait_exit(self, model: ModelConfig) -> BackendStatus:
        """Return once the backend is no longer running, with its exit code."""
        ...

    async def logs(self, model: ModelConfig, lines: int = LOG_LINES) -> list[str]:
        """The backend's last output lines (best effort: empty when unavailable)."""
        ...

    def follow(self, model: ModelConfig, lines: int = LOG_LINES) -> AsyncIterator[str]:
        """The backend's last `lines` lines, then each new one as it is printed, until the
        backend ends (like `docker logs -f --tail`); nothing when it is not running."""
        ...

    async def close(self) -> None:
        """Release the engine connection (the process runtime also stops its children)."""
        ...
