"""P5: what the idle daemon costs the host with 8 running models: CPU and memory.

Target: at most 1 % of one core and 80 MB RSS over 60 s. The baseline is a bare Python
process importing the same libraries, measured in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Report, cli, daemon, figure
from modeld.testing.ports import wait_listening

CLK_TCK = os.sysconf("SC_CLK_TCK")
BARE = (
    "import aiodocker, aiohttp, jsonrpcserver, pydantic, pynvml, structlog, time; time.sleep(600)"
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident memory in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run(quick: bool) -> Report:
    """Measure P5."""
    report = Report("footprint")
    window = 5.0 if quick else 60.0
    bare = subprocess.Popen([sys.executable, "-c", BARE])
    try:
        with daemon(8, gb_each=8.0) as (process, socket):
            import asyncio

            from modeld.client import call

            async def start_all() -> None:
                for index in range(8):
                    await call("switch", socket, model=f"m{index}")

            wait_listening(socket)
            asyncio.run(start_all())
            time.sleep(1.0)  # the last switch's own work is not idle time
            before = cpu_seconds(process.pid)
            time.sleep(window)
            cpu = (cpu_seconds(process.pid) - before) / window * 100
            memory = rss_mb(process.pid)
        baseline_mb = rss_mb(bare.pid)
    finally:
        bare.terminate()
        bare.wait()
    used = figure(
        "idle CPU, 8 running models",
        "% of a core",
        [cpu],
        target="<= 1 %",
        notes=f"over {window:.0f}s",
    )
    used.met = cpu <= 1.0
    report.add(used)
    rss = figure(
        "RSS",
        "MB",
        [memory],
        baseline=baseline_mb,
        target="<= 80 MB",
        notes="baseline: bare Python importing the same libraries",
    )
    rss.met = memory <= 80
    report.add(rss)
    return report


def main() -> None:
    """Run alone: `python -m bench.footprint [--quick]`."""
    cli(run, __doc__)


if __name__ == "__main__":
    main()
