"""`modelctl`: the thin command-line client of modeld.

Exit codes: 0 ok, 1 the daemon said no, 2 usage, 3 cannot reach the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar
from rich.table import Table

from modeld.client import Client, DaemonUnreachable, RpcError, call, default_socket

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

STATE_STYLE = {
    "running": "green",
    "loading": "yellow",
    "stopping": "yellow",
    "stopped": "dim",
    "sleeping": "cyan",
    "failed": "bold red",
}


def _ago(iso_time: str | None) -> str:
    if not iso_time:
        return "-"
    seconds = max(0.0, time.time() - datetime.fromisoformat(iso_time).timestamp())
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GB"


def render_status(console: Console, status: dict[str, Any]) -> None:
    """The models table, then one line per GPU."""
    console.print(models_table(status))
    for name, model in status["models"].items():
        if model["failure"]:
            failure = model["failure"]
            # What a backend printed is text, never markup ("[/opt/vllm]" is not a tag).
            console.print(f"[red]{escape(name)} failed:[/] {escape(failure['reason'])}")
            for line in failure["last_lines"][-5:]:
                console.print(f"  [dim]{escape(line)}[/]")
    render_gpu(console, status["gpu"])
    if line := parking_line(status):
        console.print(line)


def parking_line(status: dict[str, Any]) -> str | None:
    """Host RAM taken by parked models against the budget, when parking is on."""
    parking = status.get("parking") or {}
    if not parking.get("ram_budget_gb"):
        return None
    parked = [name for name, m in status["models"].items() if m["status"] == "sleeping"]
    return f"parked: {parking['ram_used_gb']:.1f} / {parking['ram_budget_gb']:.1f} GB host RAM" + (
        f" ({', '.join(parked)})" if parked else ""
    )


def models_table(status: dict[str, Any]) -> Table:
    """Every model: state, since, memory, health, estimated load."""
    table = Table(title="modeld models")
    for column in ("model", "state", "since", "memory", "health", "est. load"):
        table.add_column(column)
    for name, model in status["models"].items():
        state = model["status"]
        memory = _gb(model["gpu_memory_used_gb"])
        if model["gpu_memory_source"]:
            memory += f" ({model['gpu_memory_source']})"
        estimate = f"~{model['estimated_load_time_seconds']:.0f}s"
        if parked := model.get("parked"):
            estimate = f"~{parked['estimated_wake_seconds']:.1f}s (wake)"
        table.add_row(
            name + (" [pinned]" if model["pinned"] else ""),
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            _ago(model["since"]),
            memory,
            model["health"],
            estimate,
        )
    return table


def dashboard(status: dict[str, Any], last_event: str | None = None) -> Group:
    """`modelctl top`: the models, a memory bar per GPU, loads in progress, last event."""
    parts: list[Any] = [models_table(status)]
    for device in status["gpu"]["devices"]:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            f"GPU {device['index']}",
            ProgressBar(total=device["total_gb"], completed=device["used_gb"], width=40),
            f"{device['used_gb']:.1f} / {device['total_gb']:.1f} GB",
        )
        parts.append(bar)
    if line := parking_line(status):
        parts.append(line)
    for name, model in status["models"].items():
        if model["status"] == "loading":
            elapsed = time.time() - datetime.fromisoformat(model["since"]).timestamp()
            estimate = model["estimated_load_time_seconds"]
            parts.append(
                f"[yellow]{name}[/] loading {elapsed:.0f}s of ~{estimate:.0f}s "
                f"(~{max(0.0, estimate - elapsed):.0f}s left)"
            )
    if last_event:
        parts.append(f"[dim]last event:[/] {last_event}")
    return Group(*parts)


async def _top(path: Path, console: Console, once: bool) -> int:
    """A live dashboard, redrawn on every event and once a second."""
    async with Client(path) as query:
        status = await query.call("status")
        if once:
            console.print(dashboard(status))
            return EXIT_OK
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def listen() -> None:
            async with Client(path) as subscriber:
                async for event in subscriber.events():
                    queue.put_nowait(event)

        listener = asyncio.create_task(listen())
        last: str | None = None
        try:
            with Live(dashboard(status), console=console, refresh_per_second=4) as live:
                while not listener.done():
                    try:
                        event = await asyncio.wait_for(queue.get(), 1.0)
                        last = f"{event['type']} {event.get('model', '')} " + str(
                            event.get("to_state") or event.get("stopped") or ""
                        )
                    except TimeoutError:
                        pass
                    live.update(dashboard(await query.call("status"), last))
            listener.result()  # the daemon went away: say so like any other command
        finally:
            listener.cancel()
    return EXIT_OK


def render_gpu(console: Console, gpu: dict[str, Any]) -> None:
    """One line per device, and the total."""
    for device in gpu["devices"]:
        console.print(
            f"GPU {device['index']} {device['name']}: {device['used_gb']:.1f} / "
            f"{device['total_gb']:.1f} GB used, {device['free_gb']:.1f} GB free"
        )
    note = " [yellow](stale reading)[/]" if gpu["stale"] else ""
    console.print(
        f"total: {gpu['used_gb']:.1f} / {gpu['total_gb']:.1f} GB used, "
        f"{gpu['available_gb']:.1f} GB available ({gpu['backend']}){note}"
    )


def render_models(console: Console, models: list[dict[str, Any]]) -> None:
    """The configured models."""
    table = Table(title="configured models")
    for column in ("model", "runtime", "gpus", "needs", "size", "description"):
        table.add_column(column)
    for model in models:
        needs = ", ".join(f"{gb:.1f}" for gb in model["gpu_memory_required_gb"].values())
        table.add_row(
            model["name"],
            model["runtime"],
            ",".join(map(str, model["gpus"])),
            f"{needs} GB ({model['gpu_memory_required_source']})",
            _gb(model["size_gb"]),
            model["description"],
        )
    console.print(table)


def render_result(console: Console, op: str, result: dict[str, Any]) -> None:
    """A one-paragraph account of a switch/start/stop/restart."""
    status = result.get("status")
    model = result.get("model")
    if status == "already_loaded":
        console.print(f"[green]{model} is already running and healthy[/]")
        return
    if status in ("stopped", "already_stopped"):
        console.print(f"{model}: {status.replace('_', ' ')}")
        return
    parked = result.get("parked_models", [])
    for victim in result.get("unloaded_models", []):
        verb = "parked (sleep mode)" if victim in parked else "stopped"
        console.print(f"{verb} {victim} to free memory")
    if result.get("woke"):
        console.print(f"woke {model} from sleep in {result['wake_seconds']:.1f}s")
    elif result.get("wake_fallback"):
        fallback = escape(str(result["wake_fallback"]))
        console.print(f"[yellow]{model} would not wake ({fallback}): cold start[/]")
    state = result.get("state")
    if state == "running":
        took = None if result.get("woke") else result.get("load_seconds")
        console.print(
            f"[green]{model} is running and healthy[/]"
            + (f" (loaded in {took:.1f}s)" if took else "")
        )
    else:
        console.print(
            f"{model}: {state} (estimated load ~{result['estimated_load_time_seconds']:.0f}s)"
        )


def _modeld_pids() -> list[int]:
    """PIDs of running modeld daemons, to tell 'not running' from 'other socket'."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names = [os.path.basename(arg.decode(errors="replace")) for arg in argv if arg]
        as_module = any(a == "-m" and b == "modeld" for a, b in itertools.pairwise(names))
        if "modeld" in names[:2] or as_module:
            pids.append(int(entry.name))
    return pids


def _unreachable_message(exc: DaemonUnreachable) -> str:
    pids = _modeld_pids()
    if pids:
        hint = (
            f"modeld is running (pid {', '.join(map(str, pids))}) but not answering here: "
            "check --socket / MODELD_SOCKET against its [daemon] socket"
        )
    else:
        hint = "modeld does not seem to be running (start it: systemctl start modeld)"
    return f"modelctl: {exc}. {hint}"


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


async def switch_with_progress(
    console: Console, path: Path, op: str, model: str, params: dict[str, Any]
) -> Any:
    """Run a waiting call while its steps, pushed as events on a second connection, drive
    a progress bar: the current step, and loading time against the estimate."""
    async with Client(path) as watcher:
        view = (await watcher.call("status"))["models"].get(model) or {}
        load_estimate = view.get("estimated_load_time_seconds")
        wake_estimate = (view.get("parked") or {}).get("estimated_wake_seconds")
        events = await watcher.subscribe()
        request = asyncio.create_task(call(op, path, model=model, **params))
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            bar = progress.add_task(f"{op} {model}", total=None)
            estimate: float | None = None
            loading_since: float | None = None
            pushed: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(anext(events))
            try:
                while not request.done():
                    await asyncio.wait(
                        {request, pushed}, timeout=0.2, return_when="FIRST_COMPLETED"
                    )
                    if pushed.done():
                        if pushed.exception() is not None:
                            await asyncio.wait({request})  # the stream ended: wait quietly
                            break
                        event = pushed.result()
                        pushed = asyncio.ensure_future(anext(events))
                        step = describe_step(event, model)
                        if step is not None:
                            progress.update(bar, description=step)
                        if event["type"] == "state" and event["model"] == model:
                            loading = event["to_state"] == "loading"
                            loading_since = time.monotonic() if loading else None
                            waking = event["reason"] == "wake"
                            estimate = (wake_estimate if waking else load_estimate) or None
                    if loading_since is not None and estimate:
                        # Elapsed against the estimate; a slow load stretches the bar.
                        elapsed = time.monotonic() - loading_since
                        progress.update(bar, total=max(estimate, elapsed), completed=elapsed)
            finally:
                pushed.cancel()
    return await request


def render_event(console: Console, event: dict[str, Any], as_json: bool) -> None:
    """One event as a line (or as JSON)."""
    if as_json:
        print(json.dumps(event), flush=True)
        return
    stamp = datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S")
    if event["type"] == "state":
        state = event["to_state"]
        text = (
            f"{event['model']}: {event['from_state']} -> [{STATE_STYLE.get(state, '')}]"
            f"{state}[/] ({event['reason']})"
        )
        if event.get("failure"):
            text += f": {escape(str(event['failure']))}"
    elif event["type"] == "switch.plan":
        stop = ", ".join(event["stop"]) or "nothing"
        park = f", park {', '.join(event['park'])}" if event.get("park") else ""
        text = f"switch to {event['model']}: stop {stop}{park}"
    elif event["type"] == "switch.stopped":
        text = f"switch to {event['model']}: stopped {event['stopped']}"
    elif event["type"] == "switch.room_ready":
        text = f"switch to {event['model']}: memory free {event['free_gb']}"
    elif event["type"] == "switch.parked":
        text = f"switch to {event['model']}: parked {event['parked']} (sleep mode)"
    elif event["type"] in ("park.failed", "wake.failed"):
        action = "park" if event["type"] == "park.failed" else "wake"
        text = (
            f"[yellow]{event['model']}: could not {action} ({escape(str(event['error']))}); "
            f"{'stopped instead' if action == 'park' else 'cold start instead'}[/]"
        )
    elif event["type"] == "idle.unloaded":
        text = f"{event['model']}: idle, {event['action']}"
    else:
        text = escape(json.dumps(event))
    if event.get("dropped_before"):
        text += f" [yellow]({event['dropped_before']} earlier events dropped)[/]"
    console.print(f"[dim]{stamp}[/] {text}", highlight=False)


async def _watch(path: Path, console: Console, as_json: bool) -> int:
    async with Client(path) as client:
        async for event in client.events():
            render_event(console, event, as_json)
    return EXIT_OK


async def _run(args: argparse.Namespace, console: Console) -> int:
    path: Path = args.socket
    op: str = args.command
    if op == "watch":
        return await _watch(path, console, args.json)
    if op == "top":
        return await _top(path, console, args.once)
    if op == "logs":
        result = await call("logs", path, model=args.model, lines=args.lines)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for line in result["lines"]:
                console.print(line, markup=False, highlight=False)
        return EXIT_OK
    if op in ("status", "gpu", "models", "ping"):
        result = await call(op, path)
    elif op == "stop":
        result = await call(op, path, model=args.model)
    else:
        params: dict[str, Any] = {"wait": not args.no_wait}
        if args.timeout is not None:
            params["timeout"] = args.timeout
        if params["wait"] and not args.json and console.is_terminal:
            result = await switch_with_progress(console, path, op, args.model, params)
        else:
            result = await call(op, path, model=args.model, **params)
    if args.json:
        print(json.dumps(result, indent=2))
    elif op == "status":
        render_status(console, result)
    elif op == "gpu":
        render_gpu(console, result)
    elif op == "models":
        render_models(console, result)
    elif op == "ping":
        console.print(f"modeld {result['version']} answers on {path}")
    else:
        render_result(console, op, result)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """modelctl's command line."""
    parser = argparse.ArgumentParser(prog="modelctl", description="Control the modeld daemon.")
    parser.add_argument(
        "--socket",
        type=Path,
        default=default_socket(),
        help="daemon socket (default: $MODELD_SOCKET or /run/modeld/modeld.sock)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("status", "models and GPU"),
        ("gpu", "GPU memory"),
        ("models", "configured models"),
        ("ping", "is the daemon up"),
    ):
        sub.add_parser(name, help=text)
    for name, text in (
        ("switch", "make MODEL the one that answers, stopping others if needed"),
        ("start", "start MODEL if it fits without stopping anything"),
        ("restart", "stop and start MODEL"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("model")
        command.add_argument("--no-wait", action="store_true", help="return once started")
        command.add_argument("--timeout", type=float, help="seconds to wait for health")
    sub.add_parser("stop", help="stop MODEL").add_argument("model")
    sub.add_parser("watch", help="print events (state changes, switch progress) as they come")
    top = sub.add_parser("top", help="a live dashboard: models, GPU memory, loads in progress")
    top.add_argument("--once", action="store_true", help="draw once and exit")
    logs = sub.add_parser("logs", help="the last lines MODEL's backend printed")
    logs.add_argument("model")
    logs.add_argument("-n", "--lines", type=int, default=50)
    for command in sub.choices.values():
        command.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print the raw JSON result",
        )
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse, call the daemon, print; return the exit code."""
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return asyncio.run(_run(args, console))
    except DaemonUnreachable as exc:
        print(_unreachable_message(exc), file=sys.stderr)
        return EXIT_UNREACHABLE
    except RpcError as exc:
        if args.json:
            print(
                json.dumps(
                    {"error": {"code": exc.code, "message": exc.message, "data": exc.data}},
                    indent=2,
                )
            )
        else:
            err = Console(stderr=True)
            err.print(f"[red]modelctl: {escape(exc.message)}[/]", highlight=False)
            data = exc.data if isinstance(exc.data, dict) else {}
            for line in data.get("last_lines") or []:
                err.print(f"  {line}", markup=False, highlight=False)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_OK if args.command in ("watch", "top") else 130


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
