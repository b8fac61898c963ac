"""Host memory, for parking: vLLM's sleep level 1 copies a model's weights into host
RAM, so a park must not push the host into swap or the OOM killer."""

from __future__ import annotations

from pathlib import Path

MEMINFO = Path("/proc/meminfo")
# Never park into the last tenth of the host's memory: the page cache, the daemon and
# vLLM's own CPU-side buffers live there.
HEADROOM_FRACTION = 0.1


def parse_meminfo(text: str) -> dict[str, float]:
    """/proc/meminfo's fields in GB (GiB; the file counts kB)."""
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) / (1024 * 1024)
    return fields


def parkable_ram_gb(meminfo: Path = MEMINFO) -> float | None:
    """Host RAM parked weights may still take: what the kernel says is available, less
    a tenth of the total. None if it cannot be read (the configured budget then rules)."""
    try:
        fields = parse_meminfo(meminfo.read_text())
    except OSError:
        return None
    if "MemAvailable" not in fields or "MemTotal" not in fields:
        return None
    return max(0.0, fields["MemAvailable"] - HEADROOM_FRACTION * fields["MemTotal"])
