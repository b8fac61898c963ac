"""How modelctl shows things: tables, the dashboard, progress steps and events, with
rich. What a backend printed is always text, never markup."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from modeld.core.units import about, gigabytes, seconds
from modeld.wire.results import HistoryResult, PlanResult, ReloadResult, StopResult, SwitchResult
from modeld.wire.status import GpuStatus, ModelInfo, ModelStatus, Status

STATE_STYLE = {
    "running": "green",
    "loading": "yellow",
    "stopping": "yellow",
    "stopped": "dim",
    "sleeping": "cyan",
    "failed": "bold red",
}
# A device's health (docs/gpu-health.md).
HEALTH_STYLE = {"ok": "green", "degraded": "yellow", "unusable": "bold red"}


def _ago(iso_time: str | None) -> str:
    if not iso_time:
        return "-"
    gone = max(0.0, time.time() - datetime.fromisoformat(iso_time).timestamp())
    if gone < 90:
        return f"{gone:.0f}s ago"
    if gone < 5400:
        return f"{gone / 60:.0f}m ago"
    return f"{gone / 3600:.1f}h ago"


def _gb(value: float | None) -> str:
    return "-" if value is None else gigabytes(value)


def render_status(console: Console, status: Status) -> None:
    """The models table, what the running ones are doing, failures, one line per GPU."""
    console.print(models_table(status))
    for name, model in status.models.items():
        if doing := activity_text(model):
            console.print(f"[green]{escape(name)}[/] {doing}", highlight=False)
        if (failure := model.failure) is not None:
            # What a backend printed is text, never markup ("[/opt/vllm]" is not a tag).
            console.print(f"[red]{escape(name)} failed:[/] {escape(failure.reason)}")
            for printed in failure.last_lines[-5:]:
                console.print(f"  [dim]{escape(printed)}[/]")
    render_gpu(console, status.gpu)
    if line := parking_line(status):
        console.print(line)


def parking_line(status: Status) -> str | None:
    """Host RAM taken by parked models against the budget, when parking is on."""
    parking = status.parking
    if not parking.ram_budget_gb:
        return None
    parked = [name for name, m in status.models.items() if m.status == "sleeping"]
    return f"parked: {parking.ram_used_gb:.1f} / {parking.ram_budget_gb:.1f} GB host RAM" + (
        f" ({', '.join(parked)})" if parked else ""
    )


def activity_text(model: ModelStatus) -> str:
    """What a running model is doing, from its backend: "2 busy, 1.3 req/s, 45 tok/s"."""
    activity = model.activity
    if activity is None:
        return ""
    text = f"{activity.in_flight:.0f} busy"
    if activity.requests_per_s is not None and activity.tokens_per_s is not None:
        text += f", {activity.requests_per_s:.1f} req/s, {activity.tokens_per_s:.0f} tok/s"
    return text


def models_table(status: Status) -> Table:
    """Every model: state, since, memory, health, leases (requests in flight), estimated
    load."""
    table = Table(title="modeld models")
    # Names stay whole in a narrow terminal: the other cells wrap.
    table.add_column("model", no_wrap=True)
    for column in ("state", "since", "memory", "health", "leases", "est. load"):
        table.add_column(column)
    for name, model in status.models.items():
        state = model.status
        memory = _gb(model.gpu_memory_used_gb)
        if model.gpu_memory_source:
            memory += f" ({model.gpu_memory_source})"
        if model.base is not None:
            memory = f"in {model.base}"  # an adapter holds its base's memory
        estimate = about(model.estimated_load_time_seconds)
        if (parked := model.parked) is not None:
            estimate = f"{about(parked.estimated_wake_seconds)} (wake)"
        table.add_row(
            name + (" [pinned]" if model.pinned else ""),
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            _ago(model.since),
            memory,
            model.health,
            str(model.leases),
            estimate,
        )
    return table


LOADED = ("running", "loading", "sleeping")


def ps_table(status: Status) -> Table:
    """Only what is loaded (running, loading, sleeping): memory, leases, activity, since."""
    table = Table(title="loaded models")
    table.add_column("model", no_wrap=True)
    for column in ("state", "memory", "leases", "activity", "since"):
        table.add_column(column)
    for name, model in status.models.items():
        if model.status not in LOADED:
            continue
        state = model.status
        table.add_row(
            name,
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            _gb(model.gpu_memory_used_gb) if model.base is None else f"in {model.base}",
            str(model.leases),
            activity_text(model),
            _ago(model.since),
        )
    return table


def dashboard(status: Status, last_event: str | None = None) -> Group:
    """`modelctl top`: the models, a memory bar per GPU, loads in progress, last event."""
    parts: list[Any] = [models_table(status)]
    for device in status.gpu.devices:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            f"GPU {device.index}",
            ProgressBar(total=device.total_gb, completed=device.used_gb, width=40),
            f"{device.used_gb:.1f} / {device.total_gb:.1f} GB",
        )
        parts.append(bar)
    if line := parking_line(status):
        parts.append(line)
    for name, model in status.models.items():
        if model.status == "loading":
            elapsed = time.time() - datetime.fromisoformat(model.since).timestamp()
            estimate = model.estimated_load_time_seconds
            parts.append(
                f"[yellow]{name}[/] loading {seconds(elapsed)} of {about(estimate)} "
                f"({about(max(0.0, estimate - elapsed))} left)"
            )
        if doing := activity_text(model):
            parts.append(f"[green]{name}[/] {doing}")
    if last_event:
        parts.append(f"[dim]last event:[/] {last_event}")
    return Group(*parts)


def render_gpu(console: Console, gpu: GpuStatus) -> None:
    """One line per device (its health, with why unless ok; the processes modeld does
    not manage that hold its memory), and the total."""
    for device in gpu.devices:
        style = HEALTH_STYLE.get(device.health, "")
        why = f": {escape('; '.join(device.health_reasons))}" if device.health_reasons else ""
        console.print(
            f"GPU {device.index} {escape(device.name)}: {device.used_gb:.1f} / "
            f"{device.total_gb:.1f} GB used, {device.free_gb:.1f} GB free, "
            f"[{style}]{device.health}[/]{why}"
        )
        for process in gpu.processes:
            if process.unmanaged and process.device == device.index:
                console.print(
                    f"  pid {process.pid} holds {process.used_gb:.1f} GB, not managed by modeld"
                )
    note = " [yellow](stale reading)[/]" if gpu.stale else ""
    console.print(
        f"total: {gpu.used_gb:.1f} / {gpu.total_gb:.1f} GB used, "
        f"{gpu.available_gb:.1f} GB available ({gpu.backend}){note}"
    )


def render_models(console: Console, models: list[ModelInfo]) -> None:
    """The configured models."""
    table = Table(title="configured models")
    for column in ("model", "runtime", "gpus", "needs", "size", "description"):
        table.add_column(column)
    for model in models:
        needs = ", ".join(f"{gb:.1f}" for gb in model.gpu_memory_required_gb.values())
        table.add_row(
            model.name,
            model.runtime if model.base is None else f"adapter of {model.base}",
            ",".join(map(str, model.gpus)),
            f"{needs} GB ({model.gpu_memory_required_source})" if model.base is None else "-",
            _gb(model.size_gb),
            model.description,
        )
    console.print(table)


def render_history(console: Console, result: HistoryResult) -> None:
    """What was done and why, a line per entry, oldest first."""
    if not result.entries:
        console.print("no history yet")
    for entry in result.entries:
        stamp = datetime.fromtimestamp(entry.at).strftime("%Y-%m-%d %H:%M:%S")
        if entry.kind == "plan":
            text = f"{entry.model}: switch planned: {escape(entry.reason)}"
        else:
            state = entry.to_state or ""
            text = (
                f"{entry.model}: {entry.from_state} -> "
                f"[{STATE_STYLE.get(state, '')}]{state}[/] ({escape(entry.reason)})"
            )
            if entry.seconds:
                text += f" after {seconds(entry.seconds)}"
            if entry.failure:
                text += f": {escape(entry.failure)}"
        console.print(f"[dim]{stamp}[/] {text}", highlight=False, soft_wrap=True)


def render_plan(console: Console, result: PlanResult) -> None:
    """A dry run in sentences: what a switch would do, the memory, what was weighed."""
    console.print(f"switch to {result.model}: {escape(result.message)}", highlight=False)
    memory = result.memory_info
    if memory is not None and memory.required_gb is not None:
        console.print(
            f"  GPU {memory.device}: needs {memory.required_gb:.1f} GB, "
            f"{memory.available_before_gb or 0:.1f} GB free now, "
            f"{memory.freed_gb or 0:.1f} GB freed by the plan",
            highlight=False,
        )
    for candidate in result.candidates:
        what = "may be parked" if candidate.can_park else "may be stopped"
        if not candidate.movable:
            what = "stays (pinned, loading or serving requests)"
        console.print(
            f"  {candidate.name}: holds {candidate.held_gb:.1f} GB, reload "
            f"{about(candidate.reload_seconds)}, demand {candidate.demand:.2f}; {what}",
            highlight=False,
        )
    console.print(f"  (eviction policy: {result.policy}; nothing was changed)", highlight=False)


def render_reload(console: Console, result: ReloadResult) -> None:
    """What a reload changed, a line per kind of change (or that nothing did)."""
    said = False
    for names, sentence in (
        (result.added, "added"),
        (result.removed, "removed"),
        (result.unmanaged, "removed from the config while running: kept, unmanaged, until stopped"),
        (result.changed, "changed, in effect now"),
        (result.changed_at_next_start, "changed while running: in effect at its next start"),
        (result.requires_restart, "changed: needs a restart of modeld to take effect"),
    ):
        if names:
            console.print(f"{escape(', '.join(names))}: {sentence}", highlight=False)
            said = True
    if not said:
        console.print("config reloaded: nothing changed")


def render_result(console: Console, result: SwitchResult | StopResult) -> None:
    """A one-paragraph account of a switch/start/stop/restart."""
    model = result.model
    if isinstance(result, StopResult):
        console.print(f"{model}: {result.status.replace('_', ' ')}")
        return
    if result.status == "already_loaded":
        console.print(f"[green]{model} is already running and healthy[/]")
        return
    parked = result.parked_models or []
    for victim in result.unloaded_models or []:
        verb = "parked (sleep mode)" if victim in parked else "stopped"
        console.print(f"{verb} {victim} to free memory")
    if result.woke:
        console.print(f"woke {model} from sleep in {seconds(result.wake_seconds or 0.0)}")
    elif result.wake_fallback:
        fallback = escape(result.wake_fallback)
        console.print(f"[yellow]{model} would not wake ({fallback}): cold start[/]")
    if result.state == "running":
        took = None if result.woke else result.load_seconds
        console.print(
            f"[green]{model} is running and healthy[/]"
            + (f" (loaded in {seconds(took)})" if took else "")
        )
    else:
        estimate = result.estimated_load_time_seconds or 0.0
        console.print(f"{model}: {result.state} (estimated load {about(estimate)})")
