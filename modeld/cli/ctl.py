# PYTHON_ARGCOMPLETE_OK
"""`modelctl`: the thin command-line client of modeld.

Exit codes: 0 ok, 1 the daemon said no, 2 usage, 3 cannot reach the daemon.
Shell completion through argcomplete: `eval "$(modelctl completion bash)"`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import argcomplete
from argcomplete.shell_integration import shellcode
from rich.console import Console
from rich.markup import escape

from modeld.cli.live import switch_with_progress, top
from modeld.cli.render import (
    LOADED,
    ps_table,
    render_gpu,
    render_history,
    render_models,
    render_plan,
    render_reload,
    render_result,
    render_status,
)
from modeld.cli.streams import follow, watch
from modeld.client import (
    Client,
    DaemonUnreachable,
    RpcError,
    UnreadableAnswer,
    call,
    default_socket,
    read_answer,
)
from modeld.core.config import load_config
from modeld.core.errors import ConfigError
from modeld.wire.results import (
    HistoryResult,
    PlanResult,
    Pong,
    ReloadResult,
    StopResult,
    SwitchResult,
)
from modeld.wire.status import GpuStatus, ModelInfo, Status

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


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


def show(console: Console, op: str, answer: Any, path: Path) -> None:
    """The daemon's answer to `op`, read into its wire type and shown in words."""
    match op:
        case "status":
            render_status(console, read_answer(Status, op, answer))
        case "gpu":
            render_gpu(console, read_answer(GpuStatus, op, answer))
        case "models":
            listed = answer if isinstance(answer, list) else [answer]
            render_models(console, [read_answer(ModelInfo, op, model) for model in listed])
        case "reload":
            render_reload(console, read_answer(ReloadResult, op, answer))
        case "plan":
            render_plan(console, read_answer(PlanResult, op, answer))
        case "history":
            render_history(console, read_answer(HistoryResult, op, answer))
        case "ping":
            console.print(f"modeld {read_answer(Pong, op, answer).version} answers on {path}")
        case "stop":
            render_result(console, read_answer(StopResult, op, answer))
        case _:
            render_result(console, read_answer(SwitchResult, op, answer))


def socket_of(args: argparse.Namespace) -> Path:
    """--socket, else the --config file's daemon.socket, else $MODELD_SOCKET or the
    packaged default; ConfigError when the config cannot be read."""
    if args.socket is not None:
        return Path(args.socket)
    if args.config is not None:
        return load_config(args.config).daemon.socket
    return default_socket()


async def _run(args: argparse.Namespace, console: Console) -> int:
    path = socket_of(args)
    op: str = args.command
    if op == "watch":
        await watch(path, console, args.json)
        return EXIT_OK
    if op == "top":
        await top(path, console, args.once)
        return EXIT_OK
    if op == "logs" and args.follow:
        await follow(path, args.model, args.lines, console, args.json)
        return EXIT_OK
    if op == "logs":
        result = await call("logs", path, model=args.model, lines=args.lines)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for line in result["lines"]:
                console.print(line, markup=False, highlight=False)
        return EXIT_OK
    if op == "ps":
        async with Client(path) as client:
            status = await client.status()
        if args.json:
            loaded = {
                name: model.model_dump(mode="json")
                for name, model in status.models.items()
                if model.status in LOADED
            }
            print(json.dumps(loaded, indent=2))
        else:
            console.print(ps_table(status))
        return EXIT_OK
    if op == "gpu" and args.action == "reset-health":
        result = await call("gpu_reset_health", path, device=args.device)
    elif op in ("status", "gpu", "models", "ping", "reload"):
        result = await call(op, path)
    elif op == "history":
        named = {"model": args.model} if args.model else {}
        result = await call(op, path, limit=args.limit, **named)
    elif op in ("stop", "plan"):
        result = await call(op, path, model=args.model, **({"force": True} if args.force else {}))
    else:
        params: dict[str, object] = {"wait": not args.no_wait}
        if getattr(args, "force", False):
            params["force"] = True
        if args.timeout is not None:
            params["timeout"] = args.timeout
        if params["wait"] and not args.json and console.is_terminal:
            result = await switch_with_progress(console, path, op, args.model, params)
        else:
            result = await call(op, path, model=args.model, **params)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(console, op, result, path)
    return EXIT_OK


# A completion must come at once: a daemon that is slow to answer just completes nothing.
COMPLETION_TIMEOUT_S = 1.0


def _model_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Complete MODEL from the daemon's configured models (nothing if it does not answer)."""

    async def names() -> list[str]:
        socket = socket_of(parsed_args)
        models = await asyncio.wait_for(call("models", socket), COMPLETION_TIMEOUT_S)
        return [str(model["name"]) for model in models]

    try:
        return [name for name in asyncio.run(names()) if name.startswith(prefix)]
    except (DaemonUnreachable, RpcError, ConfigError, TimeoutError, OSError):
        return []


def _model_argument(command: argparse.ArgumentParser) -> None:
    model = command.add_argument("model")
    model.completer = _model_names  # type: ignore[attr-defined]  # argcomplete reads it


def build_parser() -> argparse.ArgumentParser:
    """modelctl's command line."""
    parser = argparse.ArgumentParser(
        prog="modelctl",
        description="Control the modeld daemon.",
        epilog="exit codes: 0 done; 1 the daemon said no (unknown model, insufficient memory, "
        "models busy, load failed, ...); 2 usage error; 3 cannot reach the daemon (the "
        "message names the socket and whether a modeld process runs)",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        help="daemon socket (default: the --config file's daemon.socket, else $MODELD_SOCKET, "
        "else /run/modeld/modeld.sock)",
    )
    parser.add_argument(
        "--config", type=Path, help="find the daemon's socket in this config file (daemon.socket)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("status", "models and GPU"),
        ("models", "configured models"),
        ("ps", "only what is loaded (running, loading, sleeping)"),
        ("ping", "is the daemon up"),
        ("reload", "re-read the daemon's config file and apply it (as SIGHUP does)"),
    ):
        sub.add_parser(name, help=text)
    for name, text in (
        ("switch", "make MODEL the one that answers, stopping others if needed"),
        ("start", "start MODEL if it fits without stopping anything"),
        ("restart", "stop and start MODEL"),
    ):
        command = sub.add_parser(name, help=text)
        _model_argument(command)
        command.add_argument("--no-wait", action="store_true", help="return once started")
        command.add_argument("--timeout", type=float, help="seconds to wait for health")
        if name == "switch":
            command.add_argument(
                "--force", action="store_true", help="evict models even while they serve requests"
            )
    gpu = sub.add_parser(
        "gpu",
        help="GPU memory and health; `gpu reset-health N`: GPU N is ok again (after a check)",
    )
    gpu.add_argument("action", nargs="?", choices=["reset-health"])
    gpu.add_argument("device", nargs="?", type=int)
    history = sub.add_parser("history", help="what was done to models (or MODEL) and why")
    history.add_argument("model", nargs="?")
    history.add_argument("-n", "--limit", type=int, default=50, help="the latest N (max 500)")
    plan = sub.add_parser("plan", help="what switching to MODEL would do now, and why (dry run)")
    _model_argument(plan)
    plan.add_argument("--force", action="store_true", help="plan a forced switch (no drain)")
    stop = sub.add_parser("stop", help="stop MODEL (once its requests in flight have ended)")
    _model_argument(stop)
    stop.add_argument("--force", action="store_true", help="stop it under its requests")
    sub.add_parser("watch", help="print events (state changes, switch progress) as they come")
    top = sub.add_parser("top", help="a live dashboard: models, GPU memory, loads in progress")
    top.add_argument("--once", action="store_true", help="draw once and exit")
    logs = sub.add_parser("logs", help="the last lines MODEL's backend printed")
    _model_argument(logs)
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument(
        "-f", "--follow", action="store_true", help="then print new lines until the backend ends"
    )
    completion = sub.add_parser(
        "completion",
        help='print the shell completion script: eval "$(modelctl completion bash)"',
    )
    completion.add_argument("shell", choices=["bash", "zsh", "fish"], nargs="?", default="bash")
    # The global options after the command too (`modelctl ping --config FILE`); given
    # there, they win; not given, the ones before the command stand.
    for command in sub.choices.values():
        command.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print the raw JSON result",
        )
        command.add_argument("--socket", type=Path, default=argparse.SUPPRESS, help="as above")
        command.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="as above")
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse, call the daemon, print; return the exit code."""
    parser = build_parser()
    argcomplete.autocomplete(parser)  # answers a shell's completion request, then exits
    args = parser.parse_args(argv)
    if args.command == "gpu" and (args.action is None) != (args.device is None):
        parser.error("gpu: reset-health takes a device index (modelctl gpu reset-health 0)")
    if args.command == "completion":
        print(shellcode(["modelctl"], shell=args.shell), end="")
        return EXIT_OK
    # Off a terminal (a pipe, a file) lines are never wrapped: a grep must find them whole.
    console = Console(soft_wrap=not sys.stdout.isatty())
    try:
        return asyncio.run(_run(args, console))
    except DaemonUnreachable as exc:
        print(_unreachable_message(exc), file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConfigError as exc:
        print(f"modelctl: --config: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except UnreadableAnswer as exc:
        print(f"modelctl: {exc} (is modeld the same version as modelctl?)", file=sys.stderr)
        return EXIT_REFUSED
    except RpcError as exc:
        if args.json:
            print(
                json.dumps(
                    {"error": {"code": exc.code, "message": exc.message, "data": exc.data}},
                    indent=2,
                )
            )
        else:
            err = Console(stderr=True, soft_wrap=not sys.stderr.isatty())
            err.print(f"[red]modelctl: {escape(exc.message)}[/]", highlight=False)
            data = exc.data if isinstance(exc.data, dict) else {}
            for line in data.get("last_lines") or []:
                err.print(f"  {line}", markup=False, highlight=False)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        following = args.command == "logs" and args.follow
        return EXIT_OK if args.command in ("watch", "top") or following else 130


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
