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
from typing import Annotated

import structlog
from pydantic import BaseModel, Field, ValidationError

from modeld.core.config import ModelConfig
from modeld.wire.history import HistoryEntry

log = structlog.get_logger("modeld.adapters.store")

STATE_FILE = "state.json"
KEPT_LOADS = 5
# A few hundred bytes per model: anything near this size was not written by modeld.
MAX_STATE_BYTES = 16 * 1024 * 1024
# A peak is rewritten only when it grows by more than this: no file churn from jitter.
PEAK_STEP_GB = 0.25


# A figure from the file is a finite, non-negative number: "Infinity", NaN or -5 GB
# would make every plan wrong (nothing fits, or everything does).
Figure = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Device = Annotated[int, Field(ge=0)]


class LearnedModel(BaseModel):
    """Figures learned about one model on this host."""

    load_seconds: list[Figure] = Field(default_factory=list)
    # Peak GPU memory measured while it ran, per device, and the settings it ran with:
    # a peak learned under other settings says nothing about the new ones.
    peak_gb: dict[Device, Figure] = Field(default_factory=dict)
    peak_for: str = ""
    # Sleep mode: recent wake times, and what it kept per device when parked (under the
    # settings in residual_for).
    wake_seconds: list[Figure] = Field(default_factory=list)
    residual_gb: dict[Device, Figure] = Field(default_factory=dict)
    residual_for: str = ""

    def typical_load_s(self) -> float | None:
        """The median of the recent loads, if any."""
        return _median(self.load_seconds)

    def typical_wake_s(self) -> float | None:
        """The median of the recent wakes, if any."""
        return _median(self.wake_seconds)


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


# Decisions kept: enough for a day of switching on a busy host, small enough to save.
HISTORY_KEPT = 500


class Learned(BaseModel):
    """The whole state file."""

    version: int = 1
    models: dict[str, LearnedModel] = Field(default_factory=dict)
    # The latest decisions, oldest first (at most HISTORY_KEPT).
    history: list[HistoryEntry] = Field(default_factory=list)


class Store:
    """Reads and atomically writes `state_dir/state.json`; blocking: call it off the loop."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> Learned:
        """The saved state; an empty one if there is none or it cannot be used."""
        try:
            if self.path.stat().st_size > MAX_STATE_BYTES:
                log.warning("store.too_large_ignored", path=str(self.path), limit=MAX_STATE_BYTES)
                return Learned()
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


def remember_wake(state: Learned, model: str, seconds: float) -> None:
    """Add one measured wake time, keeping the most recent few."""
    learned = state.models.setdefault(model, LearnedModel())
    learned.wake_seconds = [*learned.wake_seconds, round(seconds, 3)][-KEPT_LOADS:]


def remember_residual(state: Learned, model: ModelConfig, measured: dict[int, float]) -> None:
    """Keep what the model held per device right after it was parked."""
    learned = state.models.setdefault(model.name, LearnedModel())
    learned.residual_gb = {device: round(gb, 3) for device, gb in measured.items()}
    learned.residual_for = memory_fingerprint(model)


def learned_residual(learned: LearnedModel | None, model: ModelConfig) -> dict[int, float] | None:
    """What `model` kept when parked under its current settings, if measured."""
    if learned is None or not learned.residual_gb:
        return None
    if learned.residual_for != memory_fingerprint(model):
        return None
    return dict(learned.residual_gb)


def memory_fingerprint(model: ModelConfig) -> str:
    """The settings that decide how much memory a model takes."""
    fields = model.model_dump(
        include={
            "gpus",
            "gpu_memory_utilization",
            "gpu_memory_gb",
            "image",
            "command",
            "container",
            "env",
            "sleep_mode",
        }
    )
    return json.dumps(fields, sort_keys=True, default=str)


def learned_peak(learned: LearnedModel | None, model: ModelConfig) -> dict[int, float] | None:
    """The peak measured for `model` under its current settings, if any."""
    if learned is None or not learned.peak_gb or learned.peak_for != memory_fingerprint(model):
        return None
    return dict(learned.peak_gb)


def remember_peak(state: Learned, model: ModelConfig, measured: dict[int, float]) -> bool:
    """Raise the remembered peak where `measured` is higher; True if it grew noticeably."""
    learned = state.models.setdefault(model.name, LearnedModel())
    fingerprint = memory_fingerprint(model)
    if learned.peak_for != fingerprint:
        learned.peak_gb, learned.peak_for = {}, fingerprint
    grew = False
    for device, gb in measured.items():
        if gb > learned.peak_gb.get(device, 0.0) + PEAK_STEP_GB:
            learned.peak_gb[device] = round(gb, 3)
            grew = True
    return grew
