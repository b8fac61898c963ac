"""P1 and P2: `status` over the socket against an echo process answering as many bytes.

P1: `status` round trip p50 within 1.3x of the baseline's p50, p99 under 1 ms, with 4
and with 64 models. The baseline is a separate process on the same kind of socket that
answers each request line with a line as long as modeld's `status` answer (same
transport, same wakeups, same copies): what is left is modeld's own work. A plain echo
of the request line is reported for context. P2: at least 5,000 `status` calls per
second from 16 concurrent clients.

The floor under P1: a process with the echo's loop that dispatches each line through
jsonrpcserver's public API with the options modeld gives it, to a method answering as
many bytes serialized once. What `status` costs beyond that floor is modeld's own.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jsonrpcserver import Result, Success, dispatch_to_serializable

from bench.common import Report, cli, daemon, figure
from modeld.core.jsonraw import RawJSON, response_line
from modeld.daemon.rpc import parse, validate_envelope
from modeld.testing.ports import wait_listening

REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'


async def _echo_server(path: str, reply_bytes: int = 0) -> None:
    """Echo each line; or, given reply_bytes, answer each with a line that long."""
    reply = b"x" * (reply_bytes - 1) + b"\n" if reply_bytes else None

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(reply or line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(echo, path=path)
    async with server:
        await server.serve_forever()


async def _dispatch_server(path: str, reply_bytes: int) -> None:
    """The floor under `status`: each line dispatched by jsonrpcserver's public API, with
    the options modeld gives it (its parse, its envelope check), to a method answering
    `reply_bytes` serialized once, the answer written as modeld writes it."""
    # A JSON string: with the envelope around it, the answer line is reply_bytes long.
    envelope = len(response_line({"jsonrpc": "2.0", "result": RawJSON(b'""'), "id": 1}) or b"")
    raw = RawJSON(b'"' + b"x" * (reply_bytes - envelope) + b'"')

    def status(context: None) -> Result:
        return Success(raw)

    methods = {"status": status}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            text, request = parse(line)
            dispatched = dispatch_to_serializable(
                text,
                methods,
                context=None,
                deserializer=lambda _, parsed=request: parsed,
                validator=validate_envelope,
            )
            writer.write(response_line(dispatched) or b"")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, path=path)
    async with server:
        await server.serve_forever()


async def round_trips(paths: list[Path], count: int) -> list[list[float]]:
    """Round trips in microseconds to each server, taking turns request by request so all
    see the same machine at the same moment (after a warm-up)."""
    connections = [await asyncio.open_unix_connection(str(path), limit=1 << 24) for path in paths]
    samples: list[list[float]] = [[] for _ in paths]
    for index in range(count + count // 10):
        for (reader, writer), kept in zip(connections, samples, strict=True):
            started = time.perf_counter_ns()
            writer.write(REQUEST)
            await reader.readline()
            if index >= count // 10:
                kept.append((time.perf_counter_ns() - started) / 1000)
    for _, writer in connections:
        writer.close()
    return samples


async def throughput(path: Path, clients: int, seconds: float) -> float:
    """`status` calls per second completed by `clients` concurrent connections."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
        while time.perf_counter() < deadline:
            writer.write(REQUEST)
            await reader.readline()
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def _echo(
    path: Path, reply_bytes: int = 0, server: str = "_echo_server"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import asyncio, sys; from bench.rpc import {server}; "
            f"asyncio.run({server}(sys.argv[1], int(sys.argv[2])))",
            str(path),
            str(reply_bytes),
        ]
    )


async def _status_bytes(socket: Path) -> int:
    reader, writer = await asyncio.open_unix_connection(str(socket), limit=1 << 24)
    writer.write(REQUEST)
    size = len(await reader.readline())
    writer.close()
    return size


def run(quick: bool) -> Report:
    """Measure P1 for 4 and 64 models, and P2."""
    report = Report("rpc")
    count = 300 if quick else 5000
    with tempfile.TemporaryDirectory() as tmp:
        echo_path, sized_path = Path(tmp) / "echo.sock", Path(tmp) / "sized.sock"
        floor_path = Path(tmp) / "floor.sock"
        echo = _echo(echo_path)
        try:
            wait_listening(echo_path)
            for models in (4, 64):
                with daemon(models) as (_, socket):
                    size = asyncio.run(_status_bytes(socket))
                    sized = _echo(sized_path, size)
                    floor = _echo(floor_path, size, "_dispatch_server")
                    try:
                        wait_listening(sized_path)
                        wait_listening(floor_path)
                        # Taking turns request by request: all see the same machine.
                        baseline, status, plain, dispatched = asyncio.run(
                            round_trips([sized_path, socket, echo_path, floor_path], count)
                        )
                    finally:
                        for process, path in ((sized, sized_path), (floor, floor_path)):
                            process.terminate()
                            process.wait()
                            path.unlink(missing_ok=True)
                    base = report.add(
                        figure(f"echo answering {size} bytes (baseline)", "us", baseline)
                    )
                    report.add(
                        figure(
                            f"jsonrpcserver answering {size} bytes (the floor), {models} models",
                            "us",
                            dispatched,
                            baseline=base.median,
                            notes="the echo's loop, jsonrpcserver's dispatch with modeld's "
                            "options, the answer serialized once",
                        )
                    )
                    result = figure(
                        f"status, {models} models",
                        "us",
                        status,
                        baseline=base.median,
                        target="p50 <= 1.3x same-size echo, p99 < 1000 us",
                        notes=f"a plain echo of the request line: "
                        f"{statistics.median(plain):.0f} us",
                    )
                    result.met = result.median <= 1.3 * base.median and result.p99 < 1000
                    report.add(result)
                    if models == 4:
                        rates = [
                            asyncio.run(throughput(socket, 16, 0.5 if quick else 3.0))
                            for _ in range(1 if quick else 5)
                        ]
                        rate = figure(
                            "status throughput, 16 clients",
                            "calls/s",
                            rates,
                            target=">= 5000 calls/s",
                        )
                        rate.met = rate.median >= 5000
                        report.add(rate)
        finally:
            echo.terminate()
            echo.wait()
    return report


def main() -> None:
    """Run alone: `python -m bench.rpc [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
