"""Each benchmark still runs (quick mode); no timing is asserted here, only that every
figure was measured and written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("bench", ["rpc", "memory_wait", "footprint"])
def test_bench_runs_quick(bench: str) -> None:
    """`python -m bench.NAME --quick` exits 0 and reports its figures with targets."""
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "target" in result.stdout
    assert '"figures": [{' in result.stdout


def test_switch_overhead_runs_quick(image: str) -> None:
    """The Docker benchmark runs against the real engine (quick mode)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.switch_overhead", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "switch overhead" in result.stdout


def test_runner_writes_results(tmp_path: Path) -> None:
    """`python -m bench.run --quick` writes a RESULTS.md with the machine and each figure."""
    output = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert "machine:" in text
    for figure in ("status, 4 models", "status, 64 models", "start after release", "RSS"):
        assert figure in text
