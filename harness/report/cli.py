"""``harness report`` and ``harness compare`` (argparse subcommands; terminal output with rich).

    harness report RUN... [--format terminal,md,csv,parquet,html] [--out DIR]
                          [--measures GLOB...] [--performance GLOB...] [--n-boot N] [--n-perm N]
    harness compare A B [--fail-if value:5%] [--show all|changed] [--format terminal|md|csv] [--out FILE]

Each sets ``func(args) -> int`` (the exit code): compare returns 1 when a --fail-if rule finds a
regression, 2 when the inputs cannot be read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _formats(value: str) -> tuple[str, ...]:
    from harness.report.writers import FORMATS

    out = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in out if v not in FORMATS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    return out


def add_commands(subparsers) -> None:
    """Add ``report`` and ``compare`` to the ``harness`` command."""
    rep = subparsers.add_parser("report", help="leaderboard, relation table and HTML report from stored records",
                                description="Tables and figures from one or more runs (pure functions of records).")
    rep.add_argument("runs", nargs="+", type=Path, help="run directories or results roots")
    rep.add_argument("--format", type=_formats, default=("terminal",),
                     help="comma-separated: terminal, md, csv, parquet, html (default: terminal)")
    rep.add_argument("--out", type=Path, default=None, help="output directory for files (default: <first run>/report)")
    rep.add_argument("--measures", nargs="*", default=None, help="leaderboard columns, globs metric:measure[:task]")
    rep.add_argument("--performance", nargs="*", default=None,
                     help="performance measures, globs metric:measure[:task] (default: those the metrics declare)")
    rep.add_argument("--rank-by", default=None, help="leaderboard ranking measure, a glob metric:measure[:task] "
                     "(default: the first declared performance measure)")
    rep.add_argument("--at", default="final", help="leaderboard row per model at: final | best | step=N")
    rep.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs")
    rep.add_argument("--n-perm", type=int, default=1000, help="block permutations for p-values")
    rep.set_defaults(func=run_report)

    cmp = subparsers.add_parser("compare", help="compare two runs record by record",
                                description="Join two runs on record identity; flag regressions.")
    cmp.add_argument("a", type=Path, help="baseline run")
    cmp.add_argument("b", type=Path, help="new run")
    cmp.add_argument("--fail-if", action="append", default=[], metavar="value:5%",
                     help="exit 1 when B is worse than A by more than this (relative with %%, else absolute)")
    cmp.add_argument("--show", choices=("all", "changed"), default="changed",
                     help="rows to print (default: all but 'same')")
    cmp.add_argument("--allow-version-change", action="store_true",
                     help="with --fail-if: compare the values of records whose only difference is a package "
                          "or metric version (by default such records fail the check as not comparable)")
    cmp.add_argument("--format", choices=("terminal", "md", "csv"), default="terminal")
    cmp.add_argument("--out", type=Path, default=None, help="write the full comparison (csv/md) to this file")
    cmp.set_defaults(func=run_compare)


def _console():
    from rich.console import Console

    import os
    import sys

    # piped output (logs, CI) is not limited to 80 columns: wide tables stay readable
    return Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 200)))


def run_report(args) -> int:
    """``harness report RUN...``: tables, plots and claims from stored records."""
    from harness import report
    from harness.api import HarnessError
    from harness.report.claims import claims_of_run
    from harness.report.writers import rich_table
    from harness.store import load_results

    try:
        frame = load_results(args.runs)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    file_formats = tuple(f for f in args.format if f != "terminal")
    out = args.out or (Path(args.runs[0]) / "report")
    files, tables = report.write_report(
        frame, out, formats=file_formats, title=f"harness report: {', '.join(map(str, args.runs))}",
        measures=args.measures, performance=args.performance, n_boot=args.n_boot, n_perm=args.n_perm,
        plots="html" in file_formats, rank_by=args.rank_by, at=args.at,
        claims=[c for run in args.runs for c in claims_of_run(Path(run))],
    )
    if "terminal" in args.format:
        con = _console()
        for t in tables:
            con.print(rich_table(t))
    for f in files:
        print(f)
    return 0


def run_compare(args) -> int:
    """``harness compare A B``: what changed between two runs (exit 1 on a ``--fail-if`` rule)."""
    from harness.api import HarnessError
    from harness.report.compare import compare, not_compared, parse_fail_if, regressions, summary
    from harness.store import load_results

    try:
        rules = parse_fail_if(args.fail_if)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        a, b = load_results(args.a), load_results(args.b)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = compare(a, b)
    allow = bool(getattr(args, "allow_version_change", False))
    bad = regressions(table, rules, allow_version_change=allow)
    skipped = not_compared(table, allow_version_change=allow)
    shown = table if args.show == "all" else table[table["status"] != "same"]
    cols = ["model_id", "step", "metric", "measure", "task", "layer", "value_a", "value_b", "delta", "rel_delta",
            "z", "status", "reason"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".md":
            args.out.write_text(table.to_markdown(index=False), encoding="utf-8")
        else:
            table.to_csv(args.out, index=False)
    if args.format == "csv":
        shown[cols].to_csv(sys.stdout, index=False)
    elif args.format == "md":
        print(shown[cols].to_markdown(index=False))
    elif shown.empty:
        print("no differences")
    else:
        from rich.table import Table as RichTable

        rt = RichTable(title=f"compare {args.a} -> {args.b}")
        for c in cols:
            rt.add_column(c)
        for row in shown[cols].itertuples(index=False):
            rt.add_row(*(_fmt(v) for v in row))
        _console().print(rt)
    print(summary(table))
    if len(skipped):
        reasons = skipped["reason"].value_counts().head(3)
        print(f"{len(skipped)} record(s) not compared: "
              + "; ".join(f"{n} x {r}" for r, n in reasons.items()), file=sys.stdout)
    if rules and len(skipped):
        versions_only = int(skipped.get("version_change_only", pd_false(skipped)).sum())
        hint = (f" ({versions_only} differ only in versions: --allow-version-change compares their values)"
                if versions_only else "")
        print(f"FAIL: --fail-if cannot pass on {len(skipped)} record(s) that were not compared{hint}",
              file=sys.stderr)
    if len(bad):
        print(f"REGRESSION: {len(bad)} record(s) worse than {', '.join(map(str, rules))}:", file=sys.stderr)
        for r in bad.head(20).itertuples(index=False):
            print(f"  {r.model_id} step {r.step} {r.metric}.{r.measure} {r.task or ''}: "
                  f"{_fmt(r.value_a)} -> {_fmt(r.value_b)} ({r.status})", file=sys.stderr)
        return 1
    return 0


def pd_false(frame):
    """An all-False column for ``frame`` (for tables written before a column existed)."""
    import pandas as pd

    return pd.Series(False, index=frame.index)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m harness.report.cli report ...``) until/besides the main CLI."""
    parser = argparse.ArgumentParser(prog="harness")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
