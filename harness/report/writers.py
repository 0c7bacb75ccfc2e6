"""Write a `Table` as terminal (rich), Markdown, CSV or Parquet; all from the same frames.

Markdown and the terminal show ``Table.display`` (formatted strings, ↑/↓, ± stderr); CSV and
Parquet hold ``Table.data`` (numbers) so they can be loaded back. Footers and notes go below
the Markdown table and into the rich caption.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from harness.report.tables import Table

logger = logging.getLogger(__name__)

FORMATS = ("terminal", "md", "csv", "parquet", "html")


def to_markdown(table: Table, title: str | None = None) -> str:
    """A `Table` as Markdown (with its title and note)."""
    lines = [f"## {title or table.name}", ""]
    if table.display.empty:
        lines.append(f"_empty: {table.note or 'no rows'}_")
    else:
        lines.append(table.display.to_markdown(index=False, disable_numparse=True))
        if table.note:
            lines += ["", f"_note: {table.note}_"]
    if table.footer:
        lines += [""] + [f"- {line}" for line in table.footer]
    return "\n".join(lines) + "\n"


def rich_table(table: Table, title: str | None = None, max_rows: int = 200):
    """A `Table` as a rich table for the terminal (at most ``max_rows`` rows)."""
    from rich.table import Table as RichTable

    rt = RichTable(title=title or table.name, show_lines=False)
    if table.display.empty:
        rt.add_column("note")
        rt.add_row(table.note or "no rows")
    else:
        for c in table.display.columns:
            rt.add_column(str(c), justify="right" if c not in ("family", "size", "model_id", "checkpoint",
                                                                 "observable", "performance") else "left")
        for row in table.display.head(max_rows).itertuples(index=False):
            rt.add_row(*("" if v is None else str(v) for v in row))
    caption = list(table.footer)
    if len(table.display) > max_rows:
        caption.insert(0, f"{len(table.display) - max_rows} more rows in the files")
    if table.note and not table.display.empty:
        caption.insert(0, table.note)
    rt.caption = "\n".join(caption) or None
    return rt


def write_table(table: Table, out_dir: Path, formats: tuple[str, ...] = ("md", "csv", "parquet")) -> list[Path]:
    """Write ``<name>.md/.csv/.parquet`` under ``out_dir``; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        p = out_dir / f"{table.name}.md"
        p.write_text(to_markdown(table), encoding="utf-8")
        written.append(p)
    if "csv" in formats:
        p = out_dir / f"{table.name}.csv"
        table.data.to_csv(p, index=False)
        written.append(p)
    if "parquet" in formats and not table.data.empty:
        from harness.store import write_parquet

        data = table.data.copy()
        data.columns = [str(c) for c in data.columns]
        written.append(write_parquet(data.reset_index(drop=True), out_dir / f"{table.name}.parquet"))
    return written


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table."""
    return frame.to_markdown(index=False, disable_numparse=True) if not frame.empty else "_empty_"
