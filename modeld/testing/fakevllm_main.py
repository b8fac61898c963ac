"""`modeld-fake-vllm`: the fake vLLM server (fakevllm.py) as a process, with vLLM's
command line where it matters (--model, --port or --uds, --enable-sleep-mode,
--api-key or VLLM_API_KEY) and switches for the ways vLLM fails."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from modeld.testing.fakevllm import POLLED, FakeVllm
from modeld.testing.fakevllm_lora import FakeLoras


def _stdout_logger() -> logging.Logger:
    """Access lines on stdout, where the runtime collects a backend's output."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("INFO:     %(message)s"))
    access = logging.getLogger("fake-vllm.access")
    # modeld's own polls (/health, /metrics, /is_sleeping) would drown the requests.
    access.addFilter(lambda record: not any(p in record.getMessage() for p in POLLED))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    return access


def _loras(args: argparse.Namespace) -> FakeLoras | None:
    """Adapters at run time, where vLLM serves them: --enable-lora and
    VLLM_ALLOW_RUNTIME_LORA_UPDATING (1 or true, as vLLM reads it)."""
    updating = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower()
    if not args.enable_lora or updating not in ("1", "true"):
        return None
    return FakeLoras(args.model, args.max_lora_rank, args.lora_load_seconds)


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = FakeVllm(
        args.model,
        args.port,
        args.host,
        args.load_seconds,
        sleep_mode=args.enable_sleep_mode,
        dev_mode=os.environ.get("VLLM_SERVER_DEV_MODE") == "1",
        sleep_seconds=args.sleep_seconds,
        wake_seconds=args.wake_seconds,
        wake_fails=args.wake_fails,
        request_seconds=args.request_seconds,
        token_seconds=args.token_seconds,
        api_key=args.api_key or os.environ.get("VLLM_API_KEY") or None,
        access_log=_stdout_logger(),
        uds=args.uds,
        loras=_loras(args),
    )
    server.faults.die_over_tokens = args.die_over_tokens
    server.faults.wakes_wrong = args.wakes_wrong
    print(f"fake-vllm: loading {args.model} ({args.load_seconds}s)", flush=True)
    loading = asyncio.create_task(
        asyncio.sleep(args.fail_after)
        if args.fail_after is not None
        else _compile_then_load(server, args.compile_seconds)
    )
    stopped = asyncio.create_task(stop.wait())
    reporting = asyncio.create_task(_report_progress(args.progress_seconds, args.load_seconds))
    await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    reporting.cancel()
    if stop.is_set():
        loading.cancel()
        await server.close()
        return 0
    if args.fail_after is not None:
        print(f"fake-vllm: CUDA out of memory while loading {args.model}", flush=True)
        return int(args.exit_code)
    where = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
    print(f"fake-vllm: serving {args.model} on {where}", flush=True)
    if args.die_after is not None:
        try:
            await asyncio.wait_for(stop.wait(), args.die_after)
        except TimeoutError:
            print("fake-vllm: engine core died", flush=True)
            server.engine_dead = True
            await asyncio.sleep(1.0)
            await server.close()
            return 0
    server.engine_hung = args.hang
    died = asyncio.create_task(server.faults.died.wait())
    await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
    await server.close()
    if not stop.is_set():
        print("fake-vllm: engine core died (prompt too long); exiting", flush=True)
        return 1
    return 0


async def _compile_then_load(server: FakeVllm, compile_s: float) -> None:
    """As vLLM: torch.compile first, unless $VLLM_CACHE_ROOT holds this model's compiled
    artifacts from an earlier start; then the load."""
    root = os.environ.get("VLLM_CACHE_ROOT")
    marker = Path(root) / "torch_compile_cache" / "fake-vllm" if root else None
    if compile_s and marker is not None and marker.exists():
        print(f"fake-vllm: compile cache hit in {marker.parent}", flush=True)
    elif compile_s:
        print(f"fake-vllm: compiling ({compile_s}s)", flush=True)
        await asyncio.sleep(compile_s)
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("compiled\n")
    await server.load()


async def _report_progress(every_s: float | None, load_s: float) -> None:
    """While loading, a line every `every_s`, as vLLM logs its startup steps."""
    if not every_s:
        return
    started = asyncio.get_running_loop().time()
    while True:
        await asyncio.sleep(every_s)
        done = (asyncio.get_running_loop().time() - started) / load_s if load_s else 1.0
        print(f"fake-vllm: loading weights {min(done, 1.0):.0%}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run a fake vLLM server until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="modeld-fake-vllm", description="A fake vLLM server, for the demo and the tests."
    )
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--uds", help="listen on this Unix socket instead (as vLLM's --uds)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--fail-after", type=float, help="exit during load after this long")
    parser.add_argument(
        "--progress-seconds", type=float, help="while loading, print a line this often"
    )
    parser.add_argument(
        "--compile-seconds",
        type=float,
        default=0.0,
        help="first compile this long, unless $VLLM_CACHE_ROOT holds it from a start before",
    )
    parser.add_argument("--exit-code", type=int, default=1, help="exit code for --fail-after")
    parser.add_argument("--die-after", type=float, help="engine dies this long after ready")
    parser.add_argument(
        "--die-over-tokens", type=int, help="the engine dies (exit 1) on a longer prompt"
    )
    parser.add_argument(
        "--hang", action="store_true", help="once loaded, /health 200 but no token ever"
    )
    parser.add_argument(
        "--wakes-wrong", action="store_true", help="after a wake, answers another first token"
    )
    parser.add_argument(
        "--enable-sleep-mode",
        action="store_true",
        help="serve /sleep and /wake_up (with VLLM_SERVER_DEV_MODE=1, as vLLM)",
    )
    parser.add_argument("--sleep-seconds", type=float, default=0.3, help="time /sleep takes")
    parser.add_argument("--wake-seconds", type=float, default=0.5, help="time /wake_up takes")
    parser.add_argument("--wake-fails", action="store_true", help="/wake_up answers 500")
    parser.add_argument(
        "--request-seconds", type=float, default=0.05, help="time one completion takes"
    )
    parser.add_argument(
        "--token-seconds", type=float, default=0.0, help="time between two streamed tokens"
    )
    parser.add_argument("--api-key", help="key asked for under /v1 (default: $VLLM_API_KEY)")
    parser.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters")
    parser.add_argument("--max-loras", type=int, default=1, help="adapters in one batch")
    parser.add_argument("--max-lora-rank", type=int, default=16, help="largest adapter rank")
    parser.add_argument(
        "--lora-load-seconds", type=float, default=0.05, help="time loading an adapter takes"
    )
    sys.exit(asyncio.run(_serve(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
