"""End of a run: consolidated table, report files and the one-line summary."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("harness")


def results_table(frame: Any, limit: int = 40) -> Any:
    """A compact rich table: trajectory/suite results, and checkpoint results at each model's last step."""
    from rich.table import Table

    table = Table(title="results", show_lines=False)
    for col in ("model_id", "step", "metric", "measure", "value", "status"):
        table.add_column(col, justify="right" if col in ("step", "value") else "left")
    if frame.empty:
        return table
    last = frame.groupby("model_id")["step"].transform("max")
    shown = frame[(frame["scope"].isin(["trajectory", "suite"])) | (frame["step"] == last)]
    shown = shown[shown["layer"].isna()]
    for _, r in shown.head(limit).iterrows():
        if r["value"] is None or r["value"] != r["value"]:
            value = "-"
        else:
            value = f"{r['value']:.4g}" + (f" ± {r['stderr']:.2g}" if r["stderr"] == r["stderr"] and r["stderr"] is not None else "")
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {str(r['message'])[:60]}"
        table.add_row(str(r["model_id"]), str(r["step"]), r["metric"], str(r["measure"]), value, status)
    if len(shown) > limit:
        table.caption = f"{len(shown) - limit} more rows in the report files"
    return table


def finish_run(spec: Any, summary: Any) -> None:
    from rich.console import Console

    from harness import store

    console = Console(stderr=False)
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
        console.print(results_table(frame))
    for err in summary.errors[:5]:
        console.print(f"[red]error[/red] {err}", highlight=False)
    extra = f"; report: {written[0].parent}" if written else ""
    console.print(f"[bold]harness[/bold]: {summary.line()}{extra}", highlight=False)
    logger.info("summary: %s", summary.line())
