"""End of a run: consolidated table, report files and the one-line summary."""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("harness")


def _cell(value: Any, stderr: Any, status: str) -> str:
    if status != "ok":
        return status
    if value is None or value != value:
        return "nan"
    text = f"{value:.4g}"
    if stderr is not None and stderr == stderr:
        text += f" ± {stderr:.2g}"
    return text


def results_table(frame: Any, max_columns: int = 8) -> Any:
    """One row per model: its final checkpoint's measures and its trajectory/suite results.

    Step-resolved detail (local slopes, per-layer values) stays in the report files.
    """
    from rich.table import Table

    table = Table(title="results (final checkpoint per model)")
    table.add_column("model")
    if frame.empty:
        return table
    rows = frame[frame["layer"].isna()].copy()
    last = rows.groupby("model_id")["step"].transform("max")
    rows = rows[(rows["step"] == last) | rows["step"].isna()]
    rows = rows[rows["measure"] != "*"]
    rows["column"] = rows["measure"] + rows["task"].map(lambda t: f"[{t}]" if t else "")
    clash = rows.groupby("column")["metric"].transform("nunique") > 1
    rows.loc[clash, "column"] = rows.loc[clash, "metric"] + "." + rows.loc[clash, "column"]
    columns = list(dict.fromkeys(rows.sort_values(["scope", "metric"])["column"]))[:max_columns]
    from rich.markup import escape

    for col in columns:
        table.add_column(escape(col), justify="right")
    labels = [str(m) for m in rows["model_id"].unique()]
    prefix = os.path.commonprefix(labels)
    prefix = prefix[: prefix.rfind("/") + 1] if len(labels) > 1 else ""
    # a setting shared by every model (",seed=0") goes to the title too, so labels stay short
    suffix = os.path.commonprefix([lab[len(prefix):][::-1] for lab in labels])[::-1] if len(labels) > 1 else ""
    suffix = suffix[suffix.find(","):] if "," in suffix else ""
    for model_id, group in rows.groupby("model_id", sort=True):
        by_col = {r["column"]: _cell(r["value"], r["stderr"], r["status"]) for _, r in group.iterrows()}
        label = str(model_id)[len(prefix):]
        label = label[: len(label) - len(suffix)] if suffix and label.endswith(suffix) else label
        table.add_row(escape(label), *[escape(by_col.get(c, "")) for c in columns])
    if prefix or suffix:
        table.title += escape(f" — {prefix}…{suffix}")
    hidden = len(set(rows["column"])) - len(columns)
    if hidden > 0:
        table.caption = f"{hidden} more columns in the report files"
    return table


def end_of_run_tables(frame: Any) -> list[Any]:
    """What the end of a run prints: the ranking leaderboard(s) (one row per model), else the
    final-checkpoint results table when there is nothing to rank."""
    try:
        from harness.report.ranking import rankings
        from harness.report.writers import rich_table

        boards = [b for b in rankings(frame) if not b.empty]
    except Exception as exc:  # noqa: BLE001 (the summary must not lose the run)
        logger.warning("leaderboard failed: %s", exc)
        boards = []
    if not boards:
        return [results_table(frame)]
    return [rich_table(b) for b in boards]


def verdict_lines(written: list[Any]) -> list[str]:
    """The relation verdicts the run report wrote (``report/verdicts.csv``), one line per table."""
    import csv
    from pathlib import Path

    for path in written:
        p = Path(path)
        if p.name == "verdicts.csv" and p.is_file():
            with p.open(newline="", encoding="utf-8") as fh:
                return [f"verdict ({r['level']}): {r['verdict']}" for r in csv.DictReader(fh)]
    return []


def finish_run(spec: Any, summary: Any) -> None:
    """Consolidate, write the report, print the results table and the one-line summary."""
    from rich.console import Console

    from harness import store

    console = Console(stderr=False, width=None if os.isatty(1) else 160)
    try:
        frame = store.load_results(spec.run_root)
    except Exception as exc:  # noqa: BLE001
        frame = None
        logger.warning("no records to report: %s", exc)
    written: list[Any] = []
    if frame is not None and spec.report:
        try:
            from harness import report
        except ImportError:
            report = None  # type: ignore[assignment]
        if report is not None and hasattr(report, "write_run_report"):
            try:
                written = report.write_run_report(spec.run_root, frame)
            except Exception as exc:  # noqa: BLE001 (a report failure must not lose the run)
                logger.warning("report failed: %s", exc)
    if frame is not None and spec.job is None:
        for table in end_of_run_tables(frame):
            console.print(table)
        for line in verdict_lines(written):
            console.print(line, highlight=False, markup=False)
        from harness.report.claims import print_claims

        print_claims(console, frame, getattr(spec, "config", None))  # a preset's claims, after the ranking
    for err in summary.errors[:5]:
        console.print(f"[red]error[/red] {err}", highlight=False)
    for warn in getattr(summary, "warnings", [])[:5]:
        console.print(f"[yellow]warning[/yellow] {warn}", highlight=False)
    extra = f"; report: {written[0].parent}" if written else ""
    console.print(f"[bold]harness[/bold]: {summary.line()}{extra}", highlight=False)
    logger.info("summary: %s", summary.line())
