"""Run every benchmark and write bench/RESULTS.md: `python -m bench.run [--quick]`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    adapters,
    chunk_cost,
    cold_start,
    footprint,
    gateway,
    hostile,
    leases,
    memory_wait,
    parking,
    pressure,
    reliability,
    rpc,
    switch_overhead,
    traces,
)
from bench.common import Report, machine, ratio_text

BENCHES = [
    rpc,
    switch_overhead,
    memory_wait,
    parking,
    leases,
    gateway,
    footprint,
    hostile,
    pressure,
    traces,
    reliability,
    chunk_cost,
    cold_start,
    adapters,
]


def order() -> list[str]:
    """The benches' names, in the table's order."""
    return [bench.__name__.removeprefix("bench.") for bench in BENCHES]


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
KEPT = "## Before and after"


@dataclass
class Earlier:
    """A previous RESULTS.md's table rows and notes, by bench."""

    rows: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def earlier_results(previous: str) -> Earlier:
    """Read the rows and notes of each bench from a previous RESULTS.md."""
    earlier = Earlier()
    for line in previous.split(KEPT)[0].splitlines():
        cells = line.split("|")
        if line.startswith("| ") and len(cells) > 2 and cells[1].strip() != "bench":
            earlier.rows.setdefault(cells[1].strip(), []).append(line)
        elif line.startswith("- ") and " / " in line:
            earlier.notes.setdefault(line[2:].split(" / ")[0], []).append(line)
    return earlier


def render(reports: list[Report], quick: bool, earlier: Earlier) -> str:
    """RESULTS.md: the machine, then every figure with its spread, ratio and target; the
    rows of benches not run this time are `earlier`'s."""
    facts = machine()
    ran = {report.bench for report in reports if report.figures}
    kept = [name for name in earlier.rows if name not in ran]
    lines = [
        "# modeld benchmark results",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {facts['cores']} cores, {facts['platform']}",
        f"- Python {facts['python']}, Docker {facts['docker']}",
        f"- mode: {'quick (smoke run, few samples)' if quick else 'full'}",
        "",
        "Every ratio is against a baseline measured in the same run on the same machine.",
        *([f"Rows of {', '.join(kept)}: from an earlier run (not run this time)."] if kept else []),
        "",
        "| bench | figure | median | p99 | spread (p90-p10) | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # A bench that measured nothing (cold_start without real vLLM) keeps its earlier rows;
    # the table keeps its earlier order (by the reports' names), new benches at the end.
    by_name = {report.bench: report for report in reports if report.figures}
    names = [*earlier.rows, *(name for name in by_name if name not in earlier.rows)]
    notes: list[str] = []
    for name in names:
        if name not in by_name:
            lines.extend(earlier.rows.get(name, []))
            notes.extend(earlier.notes.get(name, []))
            continue
        for f in by_name[name].figures:
            ratio = ratio_text(f.ratio) if f.ratio is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[f.met]
            lines.append(
                f"| {name} | {f.name} | {f.median:.4g} {f.unit} | {f.p99:.4g} | "
                f"{f.spread:.3g} | {ratio} | {f.target} | {met} |"
            )
            if f.notes:
                notes.append(f"- {name} / {f.name}: {f.notes}")
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
    known = set(order())
    if chosen is not None and not chosen <= known:
        parser.error(f"unknown benches: {sorted(chosen - known)}; known: {sorted(known)}")
    benches = [b for b in BENCHES if chosen is None or b.__name__.removeprefix("bench.") in chosen]
    reports = [bench.run(args.quick) for bench in benches]
    # Comparisons written by hand below the generated table (KEPT) survive a new run, and
    # so do the rows of benches not run this time (`--only`).
    previous = args.output.read_text() if args.output.exists() else ""
    kept = "\n" + previous[previous.index(KEPT) :] if KEPT in previous else ""
    args.output.write_text(render(reports, args.quick, earlier_results(previous)) + kept)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
