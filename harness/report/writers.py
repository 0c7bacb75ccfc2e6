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


#: columns that name a row; repeated in every part when a wide table is split for the terminal
KEY_COLUMNS = ("rank", "family", "model", "model_id", "size", "step", "checkpoint", "observable", "performance")
_LEFT = ("family", "size", "model_id", "checkpoint", "observable", "performance", "claim", "why")


def short_headers(columns) -> tuple[dict[str, str], list[str]]:
    """Terminal headers: ``metric.measure`` -> ``measure`` where the measure names one column
    only, and a legend line per metric saying which columns it gave (``time_scaling: alpha, c``)."""
    import re

    parsed = {}
    for c in columns:
        m = re.fullmatch(r"([A-Za-z0-9_]+)\.([^ ]+)(.*)", str(c))
        if m and str(c) not in KEY_COLUMNS:
            parsed[c] = (m[1], m[2], m[3])
    counts: dict[str, int] = {}
    for _, measure, _ in parsed.values():
        counts[measure] = counts.get(measure, 0) + 1
    out, by_metric = {}, {}
    for c in columns:
        if c in parsed and counts[parsed[c][1]] == 1:
            metric, measure, rest = parsed[c]
            out[c] = f"{measure}{rest}"
            by_metric.setdefault(metric, []).append(measure)
        else:
            out[c] = str(c)
    legend = [f"columns of {metric}: {', '.join(ms)}" for metric, ms in by_metric.items()]
    return out, legend


class SplitTable:
    """A `Table` for the terminal that fits the console: short headers, and a table too wide for
    the console split into parts that each repeat the key columns (rank, model, ...) instead of
    squeezing cells into ``time_scali…``. A rich renderable; decides at render time."""

    def __init__(self, table: Table, title: str | None = None, max_rows: int = 200):
        self.table, self.title, self.max_rows = table, title or table.name, max_rows

    def _caption(self, legend: list[str]) -> list[str]:
        t = self.table
        caption = legend + list(t.footer)
        if len(t.display) > self.max_rows:
            caption.insert(0, f"{len(t.display) - self.max_rows} more rows in the files")
        if t.note and not t.display.empty:
            caption.insert(0, t.note)
        return caption

    def parts(self, width: int) -> list:
        """The rich tables for a console ``width`` characters wide."""
        from rich.table import Table as RichTable

        t = self.table
        if t.display.empty:
            rt = RichTable(title=self.title)
            rt.add_column("note")
            rt.add_row(t.note or "no rows")
            rt.caption = "\n".join(t.footer) or None
            return [rt]
        heads, legend = short_headers(list(t.display.columns))
        disp = t.display.head(self.max_rows)
        cells = {c: ["" if v is None else str(v) for v in disp[c]] for c in disp.columns}

        def need(c) -> int:  # natural width + padding and border
            return max([len(heads[c])] + [len(x) for x in cells[c]]) + 3

        keys = [c for c in disp.columns if c in KEY_COLUMNS]
        rest = [c for c in disp.columns if c not in KEY_COLUMNS]
        base = sum(need(c) for c in keys) + 1
        groups: list[list] = [[]]
        used = base
        for c in rest:
            if groups[-1] and used + need(c) > width:
                groups.append([])
                used = base
            groups[-1].append(c)
            used += need(c)
        out = []
        for i, group in enumerate(groups):
            cols = keys + group
            title = self.title if len(groups) == 1 else f"{self.title} (part {i + 1} of {len(groups)})"
            rt = RichTable(title=title, show_lines=False)
            for c in cols:
                rt.add_column(heads[c], justify="left" if c in _LEFT or c == "model" else "right",
                              no_wrap=c in keys, overflow="fold")
            for j in range(len(disp)):
                rt.add_row(*(cells[c][j] for c in cols))
            out.append(rt)
        return out

    def caption(self) -> list[str]:
        """The lines printed under the table(s): note, column legend, footer (flag reasons once)."""
        if self.table.display.empty:
            return []
        return self._caption(short_headers(list(self.table.display.columns))[1])

    def __rich_console__(self, console, options):
        from rich.text import Text

        yield from self.parts(options.max_width)
        for line in self.caption():  # left-aligned under the parts, wrapped at the console width
            yield Text(line, style="dim", overflow="fold")


def rich_table(table: Table, title: str | None = None, max_rows: int = 200):
    """A `Table` for the terminal (at most ``max_rows`` rows): a `SplitTable` that fits the console."""
    return SplitTable(table, title, max_rows)


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
