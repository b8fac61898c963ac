"""The restart policy: a pure decision of whether, and when, to start a dead model again."""

from __future__ import annotations

from dataclasses import dataclass

from modeld.core.config import ModelConfig


@dataclass(frozen=True)
class Retry:
    """Start it again after `delay_s`; this will be attempt number `attempt`."""

    delay_s: float
    attempt: int


@dataclass(frozen=True)
class GiveUp:
    """The retry limit is reached: leave it failed."""

    attempts: int


def restart_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff: base, 2 x base, 4 x base, ... never above the cap."""
    return float(min(cap_s, base_s * 2**attempt))


def decide_restart(model: ModelConfig, attempts: int, ran_for_s: float) -> Retry | GiveUp | None:
    """After a failure: None when the policy is "no", else retry with backoff or give up.

    A model that ran for `restart_reset_after_s` had recovered: its count starts over.
    """
    if model.restart != "on-failure":
        return None
    if ran_for_s >= model.restart_reset_after_s:
        attempts = 0
    if attempts >= model.restart_max_retries:
        return GiveUp(attempts)
    delay = restart_delay(attempts, model.restart_backoff_s, model.restart_backoff_max_s)
    return Retry(delay, attempts + 1)
