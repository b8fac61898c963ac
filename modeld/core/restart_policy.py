"""The restart policy: pure decisions of whether, and when, to start a dead model again,
and when deaths during requests are a crash loop to hold instead (docs/probes.md)."""

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


# The sizes (request bytes, None where the caller did not say) of the requests a model
# was serving at each of its deaths in a row.
Deaths = tuple[tuple[int | None, ...], ...]


def crash_streak(
    deaths: Deaths, serving: tuple[int | None, ...], ran_for_s: float, model: ModelConfig
) -> tuple[Deaths, bool]:
    """After a death: the deaths during requests in a row, and whether that is a crash
    loop to hold (`failed`, no restart, leases refused) rather than start again for the
    next retry. A death with no request in flight is not a request's doing (the streak
    stays as it was); one after a run of `restart_reset_after_s` starts a new streak.
    More than `restart_max_retries` deaths in a row during requests is a loop."""
    if ran_for_s >= model.restart_reset_after_s:
        deaths = ()
    if not serving:
        return deaths, False
    deaths = (*deaths, serving)
    return deaths, len(deaths) > model.restart_max_retries


def crash_loop_reason(deaths: Deaths) -> str:
    """Why a model is held: its deaths, and the sizes of the requests it was serving at
    each (what an operator looks for: the prompt that kills it)."""

    def sizes(serving: tuple[int | None, ...]) -> str:
        return ", ".join("? B" if size is None else f"{size} B" for size in serving)

    shown = "; ".join(sizes(serving) for serving in deaths[-5:])
    return (
        f"crash loop: died {len(deaths)} times in a row while answering requests "
        f"(request bodies in flight at each death: {shown}); held failed until an "
        "operator starts it"
    )
