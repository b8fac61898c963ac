"""The history's entries: what modeld did to each model, and why (`history`, the
state file, the page)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class HistoryEntry(BaseModel):
    """One thing modeld did to a model, and why: a state change, or a switch's plan."""

    at: float
    model: str
    kind: Literal["state", "plan"] = "state"
    from_state: str | None = None
    to_state: str | None = None
    reason: str
    failure: str | None = None
    # How long the load or wake that ended here took.
    seconds: float | None = None
    # A plan's figures: who it stopped or parked, the memory it counted, the policy.
    stop: list[str] | None = None
    park: list[str] | None = None
    required_gb: float | None = None
    available_before_gb: float | None = None
    policy: str | None = None
