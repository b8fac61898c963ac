"""The reload diff (core/reload.py): what a new config changes, and when."""

from __future__ import annotations

from typing import Any

from modeld.core.config import Config, parse_config
from modeld.core.reload import plan_reload


def config(models: dict[str, dict[str, Any]], **daemon: Any) -> Config:
    """A config of process models on a simulated GPU."""
    tables = {
        name: {"runtime": "process", "command": ["x"], "endpoint": f"http://h:{i + 1}", **extra}
        for i, (name, extra) in enumerate(models.items())
    }
    return parse_config(
        {"daemon": daemon, "gpu": {"backend": "simulated", "devices_gb": [80]}, "models": tables}
    )


def test_idle_models_change_now_running_ones_at_their_next_start() -> None:
    """Added, removed and changed models: a stopped one's change applies now; a running
    one keeps its settings until it next starts; one removed while running stays,
    unmanaged, until it stops."""
    old = config({"a": {}, "b": {}, "c": {}, "d": {}})
    new = config({"a": {"description": "x"}, "b": {"description": "y"}, "e": {}})
    plan = plan_reload(old, new, idle={"a", "c"})
    assert plan.added == ("e",)
    assert plan.removed == ("c",)
    assert plan.unmanaged == ("d",)
    assert plan.changed_now == ("a",)
    assert plan.changed_at_next_start == ("b",)
    assert plan.requires_restart == ()
    assert set(plan.config.models) == {"a", "b", "e"}


def test_settings_bound_at_start_keep_their_old_value() -> None:
    """The socket, the state dir and the GPU backend are named as needing a restart and
    keep the values in force; other daemon settings apply."""
    old = config({"a": {}}, socket="/run/a.sock", drain_timeout_s=5)
    new = config({"a": {}}, socket="/run/b.sock", drain_timeout_s=9)
    plan = plan_reload(old, new, idle=set())
    assert plan.requires_restart == ("daemon.socket",)
    assert plan.config.daemon.socket == old.daemon.socket
    assert plan.config.daemon.drain_timeout_s == 9


def test_the_same_config_changes_nothing() -> None:
    """Reloading an unchanged file is a no-op."""
    same = config({"a": {}, "b": {}})
    plan = plan_reload(same, same, idle={"a"})
    assert not (plan.added or plan.removed or plan.unmanaged or plan.changed_now)
    assert not (plan.changed_at_next_start or plan.requires_restart)
