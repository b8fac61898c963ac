"""Run every benchmark and write bench/RESULTS.md: `python -m bench.run [--quick]`."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    footprint,
    gateway,
    hostile,
    leases,
    memory_wait,
    parking,
    rpc,
    switch_overhead,
    traces,
)
from bench.common import Report, machine

BENCHES = [
    rpc,
    switch_overhead,
    memory_wait,
    parking,
    leases,
    gateway,
    footprint,
    hostile,
    traces,
]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
KEPT = "## Before and after"


def render(reports: list[Report], quick: bool) -> str:
    """RESULTS.md: the machine, then every figure with its spread, ratio and target."""
    facts = machine()
    lines = [
        "# modeld benchmark results",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {facts['cores']} cores, {facts['platform']}",
        f"- Python {facts['python']}, Docker {facts['docker']}",
        f"- mode: {'quick (smoke run, few samples)' if quick else 'full'}",
        "",
        "Every ratio is against a baseline measured in the same run on the same machine.",
        "",
        "| bench | figure | median | p99 | spread (p90-p10) | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for f in report.figures:
            ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[f.met]
            lines.append(
                f"| {report.bench} | {f.name} | {f.median:.4g} {f.unit} | {f.p99:.4g} | "
                f"{f.spread:.3g} | {ratio} | {f.target} | {met} |"
            )
    notes = [f"- {r.bench} / {f.name}: {f.notes}" for r in reports for f in r.figures if f.notes]
    return "\n".join([*lines, "", *(["Notes:", "", *notes, ""] if notes else [])])


def main() -> None:
    """Run all benchmarks, print each figure, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few samples: proves it runs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--only", help="comma-separated benches to run (e.g. rpc,switch_overhead,gateway)"
    )
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    known = {bench.__name__.removeprefix("bench.") for bench in BENCHES}
    if chosen is not None and not chosen <= known:
        parser.error(f"unknown benches: {sorted(chosen - known)}; known: {sorted(known)}")
    benches = [b for b in BENCHES if chosen is None or b.__name__.removeprefix("bench.") in chosen]
    reports = [bench.run(args.quick) for bench in benches]
    # Comparisons written by hand below the generated table (KEPT) survive a new run.
    kept = ""
    if args.output.exists() and KEPT in (previous := args.output.read_text()):
        kept = "\n" + previous[previous.index(KEPT) :]
    args.output.write_text(render(reports, args.quick) + kept)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
