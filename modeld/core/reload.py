"""What a new configuration changes: a pure comparison of the old and new config."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from modeld.core.config import Config

# Settings bound at start-up (the socket, the GPU driver, who may connect): a reload
# reports a change to them and keeps the old value until modeld restarts.
RESTART_ONLY_DAEMON_KEYS = (
    "socket",
    "socket_mode",
    "socket_group",
    "state_dir",
    "max_connections",
    "allow_uids",
    "allow_groups",
)


@dataclass(frozen=True)
class ReloadPlan:
    """How to move from the old config to the new one."""

    config: Config
    added: tuple[str, ...]
    removed: tuple[str, ...]
    unmanaged: tuple[str, ...]
    changed_now: tuple[str, ...]
    changed_at_next_start: tuple[str, ...]
    requires_restart: tuple[str, ...]


def plan_reload(old: Config, new: Config, idle: Collection[str]) -> ReloadPlan:
    """Compare configs. `idle` names the models with no backend, whose changes apply now;
    a running model keeps its config until its next start, and one removed while it runs
    stays, unmanaged, until it is stopped."""
    requires_restart = [
        f"daemon.{key}"
        for key in RESTART_ONLY_DAEMON_KEYS
        if getattr(old.daemon, key) != getattr(new.daemon, key)
    ]
    if old.gpu != new.gpu:
        requires_restart.append("gpu")
    kept = {key: getattr(old.daemon, key) for key in RESTART_ONLY_DAEMON_KEYS}
    in_force = new.model_copy(update={"daemon": new.daemon.model_copy(update=kept), "gpu": old.gpu})
    changed = [n for n in new.models if n in old.models and new.models[n] != old.models[n]]
    gone = [n for n in old.models if n not in new.models]
    return ReloadPlan(
        config=in_force,
        added=tuple(n for n in new.models if n not in old.models),
        removed=tuple(n for n in gone if n in idle),
        unmanaged=tuple(n for n in gone if n not in idle),
        changed_now=tuple(n for n in changed if n in idle),
        changed_at_next_start=tuple(n for n in changed if n not in idle),
        requires_restart=tuple(requires_restart),
    )
