"""Events in words: the sentence `modelctl watch` prints for each kind the daemon (and
the gateway's stream) publishes, and the step a switch's progress bar shows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape

from modeld.cli.render import STATE_STYLE


def describe_step(event: dict[str, Any], model: str) -> str | None:
    """The step of a switch to `model` that an event marks, in a few words; None if the
    event is about something else."""
    kind = event["type"]
    if kind == "state":
        subject, state = event["model"], event["to_state"]
        if subject == model:
            if state == "loading":
                return f"{model}: waking" if event["reason"] == "wake" else f"{model}: loading"
            if state == "failed":
                return f"{model}: failed ({event.get('failure') or event['reason']})"
            return f"{model}: {state}"
        if state in ("stopping", "sleeping"):
            return f"{'parking' if state == 'sleeping' else 'stopping'} {subject}"
        return None
    if event.get("model") != model:
        return None
    if kind == "switch.plan":
        moves = [f"stop {', '.join(event['stop'])}"] if event["stop"] else []
        moves += [f"park {', '.join(event['park'])}"] if event.get("park") else []
        return f"plan: {'; '.join(moves) or 'fits as is'}"
    if kind == "switch.stopped":
        return f"stopped {event['stopped']}"
    if kind == "switch.parked":
        return f"parked {event['parked']}"
    if kind == "switch.room_ready":
        return "memory free"
    if kind == "wake.failed":
        return f"{model}: would not wake, cold start"
    return None


def _names(names: Any) -> str:
    """A list of model names as a phrase; "nothing" for none."""
    listed = [str(name) for name in names or []]
    return escape(", ".join(listed)) if listed else "nothing"


def _free(per_device: Any) -> str:
    """`{"0": 14.0}` as "GPU 0 has 14.0 GB free"."""
    if not isinstance(per_device, dict) or not per_device:
        return "memory free"
    return ", ".join(f"GPU {d} has {float(gb):.1f} GB free" for d, gb in per_device.items())


def _state(e: dict[str, Any]) -> str:
    state = e["to_state"]
    text = (
        f"{e['model']}: {e['from_state']} -> [{STATE_STYLE.get(state, '')}]{state}[/]"
        f" ({escape(str(e['reason']))})"
    )
    return text + (f": {escape(str(e['failure']))}" if e.get("failure") else "")


def _plan(e: dict[str, Any]) -> str:
    memory = e.get("memory_info") or {}
    text = f"switch to {e['model']}: will stop {_names(e.get('stop'))}"
    if e.get("park"):
        text += f" and park {_names(e['park'])}"
    if memory.get("required_gb") is not None:
        text += (
            f" (needs {memory['required_gb']:.1f} GB, "
            f"{memory.get('available_before_gb') or 0:.1f} GB free before)"
        )
    return text


def _reloaded(e: dict[str, Any]) -> str:
    added, removed = e.get("added") or [], e.get("removed") or []
    if not added and not removed:
        return "config reloaded: no model added or removed"
    return f"config reloaded: added {_names(added)}; removed {_names(removed)}"


def _failed(e: dict[str, Any]) -> str:
    action = "park" if e["type"] == "park.failed" else "wake"
    instead = "stopped instead" if action == "park" else "cold start instead"
    return f"[yellow]{e['model']}: could not {action} ({escape(str(e['error']))}); {instead}[/]"


# Every event the daemon (and the gateway's stream) publishes, as a sentence.
EVENT_SENTENCES: dict[str, Any] = {
    "state": _state,
    "switch.plan": _plan,
    "switch.stopped": lambda e: f"switch to {e['model']}: stopped {escape(str(e['stopped']))}",
    "switch.parked": lambda e: (
        f"switch to {e['model']}: parked {escape(str(e['parked']))} (sleep mode)"
    ),
    "switch.room_ready": lambda e: f"switch to {e['model']}: room made, {_free(e.get('free_gb'))}",
    "switch.waking": lambda e: f"{e['model']}: waking from sleep",
    "park.failed": _failed,
    "wake.failed": _failed,
    "idle.unloaded": lambda e: f"{e['model']}: idle too long, {escape(str(e['action']))}",
    "drain": lambda e: (
        f"{e['model']}: waiting for its {e.get('leases', 0)} requests in flight before it goes"
    ),
    "config.reloaded": _reloaded,
    "gpu.memory": lambda e: (
        "GPU memory now: "
        + ", ".join(
            f"GPU {d['index']} {d['used_gb']:.1f} GB used, {d['free_gb']:.1f} GB free"
            for d in e["devices"]
        )
    ),
    "gateway.connected": lambda e: f"gateway: connected to modeld at {escape(str(e['socket']))}",
    "gateway.disconnected": lambda e: (
        f"[yellow]gateway: lost modeld ({escape(str(e.get('reason', '')))})[/]"
    ),
}


def event_sentence(event: dict[str, Any]) -> str:
    """One event as a sentence (rich markup); an unknown kind as its fields, not JSON."""
    sentence = EVENT_SENTENCES.get(str(event.get("type")))
    if sentence is not None:
        try:
            return str(sentence(event))
        except (KeyError, TypeError, ValueError):
            pass  # a field missing or odd: say what there is
    fields = {k: v for k, v in event.items() if k not in ("seq", "type", "time")}
    details = ", ".join(f"{k} {v}" for k, v in fields.items())
    return escape(f"{event.get('type', 'event')}: {details}" if details else str(event.get("type")))


def render_event(console: Console, event: dict[str, Any], as_json: bool) -> None:
    """One event as a line (or as JSON)."""
    if as_json:
        print(json.dumps(event), flush=True)
        return
    stamp = datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S")
    text = event_sentence(event)
    if event.get("dropped_before"):
        text += f" [yellow]({event['dropped_before']} earlier events dropped)[/]"
    console.print(f"[dim]{stamp}[/] {text}", highlight=False, soft_wrap=True)
