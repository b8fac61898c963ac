"""P1 and P2: `status` over the socket against an echo process answering as many bytes.

P1: `status` round trip p50 within 1.3x of the baseline's p50, p99 under 1 ms, with 4
and with 64 models. The baseline is a separate process on the same kind of socket that
answers each request line with a line as long as modeld's `status` answer (same
transport, same wakeups, same copies): what is left is modeld's own work. A plain echo
of the request line is reported for context. P2: at least 5,000 `status` calls per
second from 16 concurrent clients.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Report, cli, daemon, figure
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


def _echo(path: Path, reply_bytes: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys; from bench.rpc import _echo_server; "
            "asyncio.run(_echo_server(sys.argv[1], int(sys.argv[2])))",
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
        echo = _echo(echo_path)
        try:
            wait_listening(echo_path)
            for models in (4, 64):
                with daemon(models) as (_, socket):
                    size = asyncio.run(_status_bytes(socket))
                    sized = _echo(sized_path, size)
                    try:
                        wait_listening(sized_path)
                        # Taking turns request by request: both see the same machine.
                        baseline, status, plain = asyncio.run(
                            round_trips([sized_path, socket, echo_path], count)
                        )
                    finally:
                        sized.terminate()
                        sized.wait()
                        sized_path.unlink(missing_ok=True)
                    base = figure(f"echo answering {size} bytes (baseline)", "us", baseline)
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
                    report.add(base)
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
