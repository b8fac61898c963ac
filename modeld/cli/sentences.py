"""Events in words: the sentence `modelctl watch` prints for each kind the daemon (and
the gateway's stream) publishes, and the step a switch's progress bar shows."""

from __future__ import annotations

import json
from datetime import datetime

from rich.console import Console
from rich.markup import escape

from modeld.cli.render import HEALTH_STYLE, STATE_STYLE
from modeld.wire.events import (
    AnyEvent,
    ConfigReloaded,
    Draining,
    GatewayConnected,
    GatewayDisconnected,
    GpuHealthChanged,
    GpuMemory,
    IdleUnloaded,
    OtherEvent,
    ParkFailed,
    RoomReady,
    StateChanged,
    SwitchParked,
    SwitchPlanned,
    SwitchStopped,
    WakeFailed,
    Waking,
    event_json,
)


def describe_step(event: AnyEvent, model: str) -> str | None:
    """The step of a switch to `model` that an event marks, in a few words; None if the
    event is about something else."""
    match event:
        case StateChanged(model=subject, to_state=state) if subject == model:
            if state == "loading":
                return f"{model}: waking" if event.reason == "wake" else f"{model}: loading"
            if state == "failed":
                return f"{model}: failed ({event.failure or event.reason})"
            return f"{model}: {state}"
        case StateChanged(model=subject, to_state=state) if state in ("stopping", "sleeping"):
            return f"{'parking' if state == 'sleeping' else 'stopping'} {subject}"
        case SwitchPlanned(model=subject) if subject == model:
            moves = [f"stop {', '.join(event.stop)}"] if event.stop else []
            moves += [f"park {', '.join(event.park)}"] if event.park else []
            return f"plan: {'; '.join(moves) or 'fits as is'}"
        case SwitchStopped(model=subject) if subject == model:
            return f"stopped {event.stopped}"
        case SwitchParked(model=subject) if subject == model:
            return f"parked {event.parked}"
        case RoomReady(model=subject) if subject == model:
            return "memory free"
        case WakeFailed(model=subject) if subject == model:
            return f"{model}: would not wake, cold start"
    return None


def _names(names: list[str]) -> str:
    """A list of model names as a phrase; "nothing" for none."""
    return escape(", ".join(names)) if names else "nothing"


def _free(per_device: dict[str, float]) -> str:
    """`{"0": 14.0}` as "GPU 0 has 14.0 GB free"."""
    if not per_device:
        return "memory free"
    return ", ".join(f"GPU {d} has {gb:.1f} GB free" for d, gb in per_device.items())


def _state(e: StateChanged) -> str:
    state = e.to_state
    text = (
        f"{e.model}: {e.from_state} -> [{STATE_STYLE.get(state, '')}]{state}[/]"
        f" ({escape(e.reason)})"
    )
    return text + (f": {escape(e.failure)}" if e.failure else "")


def _plan(e: SwitchPlanned) -> str:
    memory = e.memory_info
    text = f"switch to {e.model}: will stop {_names(e.stop)}"
    if e.park:
        text += f" and park {_names(e.park)}"
    if memory.required_gb is not None:
        text += (
            f" (needs {memory.required_gb:.1f} GB, "
            f"{memory.available_before_gb or 0:.1f} GB free before)"
        )
    return text


def _reloaded(e: ConfigReloaded) -> str:
    if not e.added and not e.removed:
        return "config reloaded: no model added or removed"
    return f"config reloaded: added {_names(e.added)}; removed {_names(e.removed)}"


def _failed(model: str, action: str, error: str) -> str:
    instead = "stopped instead" if action == "park" else "cold start instead"
    return f"[yellow]{model}: could not {action} ({escape(error)}); {instead}[/]"


def event_sentence(event: AnyEvent) -> str:
    """One event as a sentence (rich markup); another kind as its fields, not JSON."""
    match event:
        case OtherEvent():
            details = ", ".join(f"{k} {v}" for k, v in event.fields.items())
            return escape(f"{event.type}: {details}" if details else event.type)
        case StateChanged():
            return _state(event)
        case SwitchPlanned():
            return _plan(event)
        case SwitchStopped():
            return f"switch to {event.model}: stopped {escape(event.stopped)}"
        case SwitchParked():
            return f"switch to {event.model}: parked {escape(event.parked)} (sleep mode)"
        case RoomReady():
            return f"switch to {event.model}: room made, {_free(event.free_gb)}"
        case Waking():
            return f"{event.model}: waking from sleep"
        case ParkFailed():
            return _failed(event.model, "park", event.error)
        case WakeFailed():
            return _failed(event.model, "wake", event.error)
        case IdleUnloaded():
            return f"{event.model}: idle too long, {escape(event.action)}"
        case Draining() if event.leases:
            return (
                f"{event.model}: waiting for its {event.leases} requests in flight before it goes"
            )
        case Draining():
            return f"{event.model}: waiting for its lease holders to let go before it goes"
        case ConfigReloaded():
            return _reloaded(event)
        case GpuMemory():
            return "GPU memory now: " + ", ".join(
                f"GPU {d.index} {d.used_gb:.1f} GB used, {d.free_gb:.1f} GB free"
                for d in event.devices
            )
        case GpuHealthChanged():
            style = HEALTH_STYLE.get(event.to_health, "")
            why = f" ({escape('; '.join(event.reasons))})" if event.reasons else ""
            on = f"; on it: {_names(event.models)}" if event.models else ""
            return (
                f"GPU {event.device}: {event.from_health} -> [{style}]{event.to_health}[/]{why}{on}"
            )
        case GatewayConnected():
            return f"gateway: connected to modeld at {escape(event.socket)}"
        case GatewayDisconnected():
            return f"[yellow]gateway: lost modeld ({escape(event.reason)})[/]"


def render_event(console: Console, event: AnyEvent, as_json: bool) -> None:
    """One event as a line (or as JSON)."""
    if as_json:
        print(json.dumps(event_json(event)), flush=True)
        return
    stamp = datetime.fromtimestamp(event.time).strftime("%H:%M:%S")
    text = event_sentence(event)
    if event.dropped_before:
        text += f" [yellow]({event.dropped_before} earlier events dropped)[/]"
    console.print(f"[dim]{stamp}[/] {text}", highlight=False, soft_wrap=True)
