"""What modeld learns and keeps across restarts, in `state_dir`, written atomically.

A corrupt or unreadable file is reported and ignored (and rewritten at the next
save), never fatal: losing learned figures costs accuracy, not availability.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import structlog
from pydantic import BaseModel, Field, ValidationError

log = structlog.get_logger("modeld.store")

STATE_FILE = "state.json"
KEPT_LOADS = 5


class LearnedModel(BaseModel):
    """Figures learned about one model on this host."""

    load_seconds: list[float] = Field(default_factory=list)

    def typical_load_s(self) -> float | None:
        """The median of the recent loads, if any."""
        if not self.load_seconds:
            return None
        ordered = sorted(self.load_seconds)
        return ordered[len(ordered) // 2]


class Learned(BaseModel):
    """The whole state file."""

    version: int = 1
    models: dict[str, LearnedModel] = Field(default_factory=dict)


class Store:
    """Reads and atomically writes `state_dir/state.json`; blocking: call it off the loop."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> Learned:
        """The saved state; an empty one if there is none or it cannot be used."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Learned()
        except OSError as exc:
            log.warning("store.unreadable", path=str(self.path), error=str(exc))
            return Learned()
        try:
            return Learned.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            log.warning(
                "store.corrupt_ignored", path=str(self.path), error=str(exc).splitlines()[0]
            )
            return Learned()

    def save(self, state: Learned) -> bool:
        """Write through a temp file, fsync, rename, fsync the directory; False if it failed."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd, temp = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(state.model_dump_json(indent=2))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log.warning("store.save_failed", path=str(self.path), error=str(exc))
            return False
        return True


def remember_load(state: Learned, model: str, seconds: float) -> None:
    """Add one measured load time, keeping the most recent few."""
    learned = state.models.setdefault(model, LearnedModel())
    learned.load_seconds = [*learned.load_seconds, round(seconds, 3)][-KEPT_LOADS:]
