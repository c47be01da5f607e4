"""`python -m benchmarks [--quick] [--only NAME ...]`: run the benchmarks, print one table, write
docs/benchmarks.md. Progress goes to stderr."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import freshness, gpu, ingest, job_overhead, quality, search_latency, throughput
from benchmarks.common import REPO_ROOT, Report, Row, machine, progress, verdict

# Run order: cheapest process start-ups last; each entry: name, module runner.
BENCHMARKS: dict[str, Callable[[bool], Any]] = {
    "quality": quality.run,
    "throughput": throughput.run,
    "search": search_latency.run,
    "jobs": job_overhead.run,
    "freshness": freshness.run,
    "ingest": ingest.run,
    "gpu": gpu.report,  # measured only where CUDA is available
}
DOC = REPO_ROOT / "docs" / "benchmarks.md"
HEADER = ("#", "figure", "measured", "limit side by side", "ratio", "target", "result")


def _run_one(name: str, quick: bool) -> Report:
    runner = BENCHMARKS[name]
    started = time.perf_counter()
    try:
        result = runner(quick)
        report: Report = asyncio.run(result) if inspect.iscoroutine(result) else result
    except Exception as exc:  # one failing benchmark must not hide the others
        traceback.print_exc(file=sys.stderr)
        report = Report(name, rows=[Row(name, "benchmark failed", f"{type(exc).__name__}: {exc}"[:200])])
        report.rows[0].passed = False
    report.seconds = time.perf_counter() - started
    progress(f"{name}: done in {report.seconds:.0f} s")
    return report


def _table(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for row in rows:
        cells = (
            row.benchmark,
            row.figure,
            row.value,
            row.baseline,
            row.ratio,
            row.target,
            verdict(row.passed),
        )
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument(
        "--only", action="append", choices=[*BENCHMARKS], help="run only this benchmark (repeatable)"
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md (default: only for a full run, without --quick or --only)",
    )
    args = parser.parse_args(argv)
    names = args.only or [*BENCHMARKS]
    started = time.perf_counter()
    reports = [_run_one(name, args.quick) for name in names]
    rows = [row for report in reports for row in report.rows]
    table = _table(rows)
    print(table)
    write = args.write if args.write is not None else not (args.quick or args.only)
    if write:
        DOC.write_text(_document(reports, table, args.quick, time.perf_counter() - started), encoding="utf-8")
        progress(f"wrote {DOC.relative_to(REPO_ROOT)}")
    return 0


def _document(reports: list[Report], table: str, quick: bool, seconds: float) -> str:
    info = machine()
    notes = "\n".join(f"- {note}" for report in reports for note in report.notes)
    timings = ", ".join(f"{r.name} {r.seconds:.0f} s" for r in reports if r.seconds)
    analysis_path = REPO_ROOT / "benchmarks" / "ANALYSIS.md"
    analysis = analysis_path.read_text(encoding="utf-8") if analysis_path.is_file() else ""
    return f"""# Benchmarks

Written by `make bench` (`.venv/bin/python -m benchmarks{" --quick" if quick else ""}`); every figure is
measured side by side with its limit in the same run, on this machine:

- CPU: {info["cpu"]}, {info["cores"]} cores; RAM {info["ram"]}; Python {info["python"]}
- Date: {info["date"]}; commit {info["commit"]}
- Run time: {seconds / 60:.1f} min ({timings})

{table}

## How each figure was measured

{notes}
{analysis}"""


if __name__ == "__main__":
    raise SystemExit(main())
