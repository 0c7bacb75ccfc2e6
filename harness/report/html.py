"""One self-contained HTML file per run: tables plus every figure embedded as base64 PNG/SVG.

No external CSS, JS or image files: the report can be mailed or attached to an issue.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.report.tables import Table

logger = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+4){text-align:left}
.note{color:#8a5a00}.footer{color:#666;font-size:12px}
figure{display:inline-block;margin:6px;max-width:100%}img{max-width:100%;height:auto;border:1px solid #eee}
.scroll{overflow-x:auto;max-width:100%}  /* wide tables scroll inside their box, not the page */
[data-table="claims"] td{text-align:left}
"""


def _img(path: Path) -> str:
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        path.suffix.lower())
    if mime is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:{mime};base64,{data}">'
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")


def _table(table: Table, title: str) -> str:
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if table.display.empty:
        parts.append(f'<p class="note">empty: {html.escape(table.note or "no rows")}</p>')
    else:
        parts.append(f'<div class="scroll" data-table="{html.escape(table.name)}">'
                     + table.display.to_html(index=False, escape=True, border=0, na_rep="") + "</div>")
        if table.note:
            parts.append(f'<p class="note">{html.escape(table.note)}</p>')
    if table.footer:
        parts.append('<ul class="footer">' + "".join(f"<li>{html.escape(x)}</li>" for x in table.footer) + "</ul>")
    return "\n".join(parts)


def render(title: str, tables: Sequence[tuple[str, Table]], figures: Sequence[tuple[str, Sequence[Path]]],
           notes: Sequence[str] = (), after: Sequence[tuple[str, Table]] = ()) -> str:
    """A self-contained HTML report: ``tables``, then the figures (embedded), then ``after``
    (the long per-checkpoint tables: a reader meets the ranking, claims, relations and
    figures first)."""
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="footer">generated {_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}</p>']
    body += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    for name, t in tables:
        body.append(_table(t, name))
    for name, files in figures:
        body.append(f"<h2>{html.escape(name)}</h2>")
        imgs = [_img(Path(f)) for f in files if Path(f).exists()]
        body.append("".join(i for i in imgs if i) or '<p class="note">no figure: not enough data</p>')
    for name, t in after:
        body.append(_table(t, name))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def status_table(frame: pd.DataFrame) -> Table:
    """Counts by metric x status, and the messages of skipped/error records (first of each)."""
    if frame.empty:
        return Table("status", pd.DataFrame(), pd.DataFrame(), note="no records")
    counts = frame.groupby(["metric", "status"]).size().unstack("status", fill_value=0).reset_index()
    for s in ("ok", "skipped", "error"):
        if s not in counts:
            counts[s] = 0
    msgs = (frame[frame["status"] != "ok"].groupby("metric")["message"].agg(lambda m: m.dropna().iloc[0]
                                                                             if m.notna().any() else ""))
    counts["first message"] = counts["metric"].map(msgs).fillna("")
    counts = counts[["metric", "ok", "skipped", "error", "first message"]].sort_values("metric")
    return Table("status", counts, counts.astype(str))
