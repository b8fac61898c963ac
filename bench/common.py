"""What every benchmark shares: statistics, machine facts, a daemon to measure, results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modeld.testing.ports import free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    """One measured figure: its samples' median, p99 and spread, and its target."""

    name: str
    unit: str
    median: float
    p99: float
    spread: float
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        """Median over the baseline's median, when there is a baseline."""
        return self.median / self.baseline if self.baseline else None


def ratio_text(ratio: float) -> str:
    """A ratio as RESULTS.md writes it: two decimals, or two significant digits below
    0.01 (an adapter switch is 0.0002x a cold start, not 0.00x)."""
    return f"{ratio:.2g}x" if ratio < 0.01 else f"{ratio:.2f}x"


def summarize(samples: Sequence[float]) -> tuple[float, float, float]:
    """Median, p99 and spread (p90 - p10) of samples."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0], ordered[0], 0.0
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return statistics.median(ordered), cuts[98], cuts[89] - cuts[9]


def figure(name: str, unit: str, samples: Sequence[float], **extra: Any) -> Figure:
    """A Figure from raw samples."""
    median, p99, spread = summarize(samples)
    return Figure(name, unit, median, p99, spread, **extra)


@dataclass
class Report:
    """One benchmark's figures, printed and kept for RESULTS.md."""

    bench: str
    figures: list[Figure] = field(default_factory=list)

    def add(self, item: Figure) -> Figure:
        """Keep a figure and print it."""
        self.figures.append(item)
        ratio = f"  ratio {ratio_text(item.ratio)}" if item.ratio is not None else ""
        verdict = {True: "  [met]", False: "  [MISSED]", None: ""}[item.met]
        print(
            f"{self.bench}: {item.name}: median {item.median:.4g} {item.unit}, p99 "
            f"{item.p99:.4g}, spread {item.spread:.3g}{ratio}  target {item.target}{verdict}"
        )
        return item

    def to_json(self) -> str:
        """For the runner."""
        return json.dumps({"bench": self.bench, "figures": [asdict(f) for f in self.figures]})


def cli(run: Callable[[bool], Report], description: str | None) -> None:
    """A benchmark run alone: `python -m bench.NAME [--quick]` prints its figures."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="few samples: proves it runs")
    print(run(parser.parse_args().quick).to_json())


def machine() -> dict[str, str]:
    """Cores, Python and Docker versions."""
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "docker": docker.stdout.strip() or "unavailable",
    }


def write_config(
    path: Path,
    models: int,
    socket: Path,
    *,
    load_seconds: float = 0.0,
    devices_gb: float = 640.0,
    gb_each: float = 8.0,
    release_delay_s: float = 0.0,
    socket_group: str | None = None,
    backend_args: tuple[str, ...] = (),
) -> list[int]:
    """A process-runtime config of `models` fake vLLM models; their ports."""

    ports = [free_port() for _ in range(models)]
    lines = [
        "[daemon]",
        f'socket = "{socket}"',
        *([f'socket_group = "{socket_group}"'] if socket_group else []),
        f'state_dir = "{path.parent / "state"}"',
        "poll_interval_s = 2.0",
        "health_poll_interval_s = 0.01",
        "memory_poll_interval_s = 0.01",
        "[gpu]",
        'backend = "simulated"',
        f"devices_gb = [{devices_gb}]",
        f"release_delay_s = {release_delay_s}",
    ]
    for index, port in enumerate(ports):
        lines += [
            f'[models."m{index}"]',
            'runtime = "process"',
            f'command = ["modeld-fake-vllm", "--model", "m{index}", "--port", "{port}", '
            f'"--load-seconds", "{load_seconds}"'
            + "".join(f', "{arg}"' for arg in backend_args)
            + "]",
            f'endpoint = "http://127.0.0.1:{port}"',
            f"gpu_memory_gb = {gb_each}",
            "load_timeout_s = 60",
        ]
    path.write_text("\n".join(lines) + "\n")
    return ports


@contextmanager
def daemon(
    models: int, socket_dir_mode: int = 0o700, **config: Any
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A modeld process over `models` fake models; its socket once it answers."""
    with tempfile.TemporaryDirectory(prefix="modeld-bench-") as tmp:
        os.chmod(tmp, socket_dir_mode)
        socket, path = Path(tmp) / "modeld.sock", Path(tmp) / "modeld.toml"
        write_config(path, models, socket, **config)
        process = subprocess.Popen(
            [sys.executable, "-m", "modeld", "--config", str(path)],
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MODELD_LOG_LEVEL": "warning"},
        )
        try:
            wait_listening(socket, alive=lambda: process.poll() is None)
            yield process, socket
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def modeld_and_gateway(
    config: Path, socket: Path
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str]]:
    """modeld and modeld-gateway as processes over `config` (quiet logs): both, and the
    gateway's HOST:PORT, once the daemon answers on `socket`; both ended on exit."""
    env = {**os.environ, "MODELD_LOG_LEVEL": "warning"}
    bin_dir = Path(sys.executable).parent
    daemon = subprocess.Popen(
        [bin_dir / "modeld", "--config", config], stderr=subprocess.DEVNULL, env=env
    )
    listen = f"127.0.0.1:{free_port()}"
    gateway = subprocess.Popen(
        [bin_dir / "modeld-gateway", "--config", config, "--listen", listen, "--socket", socket],
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_listening(socket, alive=lambda: daemon.poll() is None)
        yield daemon, gateway, listen
    finally:
        for process in (gateway, daemon):
            process.terminate()
            process.wait(timeout=120)


def tcp_listening(listen: str) -> bool:
    """Whether something accepts connections at HOST:PORT."""
    host, port = listen.rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0
