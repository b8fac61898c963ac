"""Hostile clients against a real modeld process: does everyone else stay served?

- 500 idle connections from one uid (nobody, when run as root): another client's
  `status`, on a fresh connection each time, against the same call on a quiet daemon.
  Target: within 2x.
- A client flooding 40,000 `status` calls without reading its answers: a bystander's
  `ping` against the quiet one (target within 2x), and how much the daemon grew
  (target under 150 MB).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from pathlib import Path

from bench.common import Report, cli, daemon, figure

STATUS = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'
NOBODY = 65534


async def fresh_calls(path: Path, request: bytes, count: int) -> list[float]:
    """Connect, call, hang up, `count` times: microseconds each."""
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
        writer.write(request)
        await reader.readline()
        samples.append((time.perf_counter_ns() - started) / 1000)
        writer.close()
    return samples


async def calls(path: Path, request: bytes, count: int) -> list[float]:
    """`count` calls on one connection: microseconds each."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        writer.write(request)
        await reader.readline()
        samples.append((time.perf_counter_ns() - started) / 1000)
    writer.close()
    return samples


def hoard(path: Path, count: int) -> tuple[int, list[socket.socket]]:
    """Open `count` connections (as nobody when root) and keep the admitted ones."""
    if os.geteuid() == 0:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)  # SO_PEERCRED records the credentials at connect()
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            sock.settimeout(0.05)
            try:
                sock.recv(4096)
                sock.close()  # refused: its share is full
            except TimeoutError:
                held.append(sock)
    finally:
        if os.geteuid() != os.getuid():
            os.seteuid(0)
            os.setegid(0)
    return len(held), held


def rss_kb(pid: int) -> int:
    """A process's resident memory in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def flood(path: Path, stop: threading.Event) -> None:
    """40,000 `status` calls, never reading an answer, until cut off or told to stop."""
    payload = STATUS * 40_000
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.settimeout(0.5)
        sent = 0
        while sent < len(payload) and not stop.is_set():
            try:
                sent += sock.send(payload[sent : sent + 65536])
            except TimeoutError:
                continue
            except OSError:
                return


def run(quick: bool) -> Report:
    """Measure both scenarios on one daemon."""
    report = Report("hostile")
    count = 50 if quick else 400
    with daemon(4, socket_group="nogroup", socket_dir_mode=0o755) as (process, path):
        quiet = asyncio.run(fresh_calls(path, STATUS, count))
        held, sockets = hoard(path, 500)
        loaded = asyncio.run(fresh_calls(path, STATUS, count))
        for sock in sockets:
            sock.close()
        quiet_median = figure("quiet", "us", quiet).median
        report.add(
            figure(
                "status on a fresh connection, 500 idle connections from one uid",
                "us",
                loaded,
                baseline=quiet_median,
                target="<= 2x quiet",
                met=figure("x", "us", loaded).median <= 2 * quiet_median,
                notes=f"{held} of the 500 admitted (the uid's share); quiet median "
                f"{quiet_median:.0f} us",
            )
        )
        quiet_ping = figure("quiet", "us", asyncio.run(calls(path, PING, count))).median
        before = rss_kb(process.pid)
        stop = threading.Event()
        flooder = threading.Thread(target=flood, args=(path, stop))
        flooder.start()
        time.sleep(0.5)
        during = asyncio.run(calls(path, PING, count))
        peak = rss_kb(process.pid)
        stop.set()
        flooder.join()
        report.add(
            figure(
                "ping while another client floods 40,000 status calls unread",
                "us",
                during,
                baseline=quiet_ping,
                target="<= 2x quiet",
                met=figure("x", "us", during).median <= 2 * quiet_ping,
            )
        )
        grown = (peak - before) / 1024
        report.add(
            figure(
                "daemon growth during the flood",
                "MB",
                [grown],
                target="< 150 MB",
                met=grown < 150,
                notes=json.dumps({"rss_before_mb": round(before / 1024, 1)}),
            )
        )
    return report


if __name__ == "__main__":
    cli(run, __doc__)
