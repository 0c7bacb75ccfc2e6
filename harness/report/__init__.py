"""Reports: leaderboard, relation table, run comparison, plots and a self-contained HTML page.

Pure functions of records (the frame `harness.store.load_results` returns); family- and
metric-agnostic; no torch. The runner calls `write_run_report` at the end of every run, and the
``harness`` CLI gets two subcommands from `add_commands`::

    harness report results/run1 results/run2 --format terminal,md,csv,html --out report/
    harness compare results/a results/b --fail-if value:5%

    >>> from harness.report import leaderboard, relation, compare
    >>> leaderboard(frame).display          # strings with ↑/↓ and ± stderr
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["add_commands", "compare", "leaderboard", "relation", "trajectories", "write_report", "write_run_report"]


def leaderboard(frame: pd.DataFrame, **kw: Any):
    """The ranking leaderboard: one row per model (see `harness.report.ranking`)."""
    from harness.report.ranking import leaderboard as _lb

    return _lb(frame, **kw)


def trajectories(frame: pd.DataFrame, measures=None, **kw: Any):
    """The per-checkpoint long table (every checkpoint of every run)."""
    from harness.report.tables import trajectories as _tr

    return _tr(frame, measures, **kw)


def relation(frame: pd.DataFrame, performance=None, **kw: Any):
    """The relation table of observables to performance (see `harness.report.tables.relation`)."""
    from harness.report.tables import relation as _rel

    return _rel(frame, performance, **kw)


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Record-by-record differences between two runs (see `harness.report.compare.compare`)."""
    from harness.report.compare import compare as _cmp

    return _cmp(a, b)


#: written into every report directory: marks it as one `write_report` may replace as a whole
REPORT_MARKER = ".harness-report"
#: what a report directory written before the marker existed holds (it may be replaced too)
_REPORT_NAMES = ("leaderboard", "relation", "status", "ranking", "trajector", "claims", "report.html", "figures")


def write_report(frame: pd.DataFrame, out_dir: Path, **kw: Any) -> tuple[list[Path], list[Any]]:
    """Write every table (and the HTML page) as the directory ``out_dir``; returns (files, tables).

    The directory is written as a whole: into a temporary sibling, then swapped in
    (`harness.atomic.atomic_dir`), so no file of an older report survives beside the new one and
    a reader never sees half a report. An existing ``out_dir`` that is not a report directory
    (it holds other files) is refused, never replaced. Keywords: see `_write_files`.
    """
    from harness.api import HarnessError
    from harness.atomic import atomic_dir

    out_dir = Path(out_dir)
    if not kw.get("formats", True):  # tables only (the terminal): nothing is written, nothing replaced
        import tempfile

        with tempfile.TemporaryDirectory(prefix="harness-report-") as scratch:
            return [], _write_files(frame, Path(scratch), **kw)[1]
    if out_dir.exists() and not _is_report_dir(out_dir):
        raise HarnessError(f"{out_dir} exists and is not a harness report directory; refusing to replace it "
                           "(choose a new or empty --out directory)")
    with atomic_dir(out_dir) as tmp:
        (tmp / REPORT_MARKER).write_text("written by harness.report.write_report; replaced as a whole\n")
        files, tables = _write_files(frame, tmp, **kw)
    return [out_dir / p.relative_to(tmp) for p in files], tables


def _is_report_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    entries = [p.name for p in path.iterdir()]
    return not entries or REPORT_MARKER in entries or all(n.startswith(_REPORT_NAMES) for n in entries)


def _write_files(frame: pd.DataFrame, out_dir: Path, *, formats: tuple[str, ...] = ("md", "csv", "parquet", "html"),
                 title: str = "harness report", measures=None, performance=None,
                 n_boot: int = 1000, n_perm: int = 1000, plots: bool = True, rank_by: str | None = None,
                 at: str = "final", claims=None) -> tuple[list[Path], list[Any]]:
    """Write every table (and the HTML page) into the fresh directory ``out_dir``; returns (files, tables).

    Order: the ranking leaderboard(s) first (then a preset's claims), the verdicts, the relation
    tables at checkpoint, step and model level, the per-checkpoint trajectories, the record status.
    The HTML page puts the figures after the relation tables, before the last two.

    Robust by design: a section that fails is logged and named in the HTML, never raised, so
    a report over partial or odd records still says what it can.
    """
    from harness.report import html as H
    from harness.report import levels as L
    from harness.report import plots as P
    from harness.report.ranking import rankings
    from harness.report.tables import Table
    from harness.report.tables import trajectories as _tr
    from harness.report.tables import relation as _rel
    from harness.report.writers import write_table

    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    files: list[Path] = []

    def safe(name: str, fn, default):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 (a report section must not lose the others)
            logger.warning("report: %s failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
            return default

    def failed(name: str) -> Table:
        return Table(name, pd.DataFrame(), pd.DataFrame(), note="failed; see the log")

    frame = frame if frame is not None else pd.DataFrame()
    boards = safe("leaderboard", lambda: rankings(frame, rank_by=rank_by, at=at, performance=performance),
                  [failed("leaderboard")])
    relations = [
        safe("relation_checkpoint", lambda: _rel(frame, performance, n_boot=n_boot, n_perm=n_perm),
             failed("relation_checkpoint")),
        safe("relation_step", lambda: L.step_relation(frame, performance, n_boot=n_boot), failed("relation_step")),
        safe("relation_model", lambda: L.model_relation(frame, performance, n_boot=n_boot), failed("relation_model")),
    ]
    verdicts = safe("verdicts", lambda: L.verdict_table(relations), failed("verdicts"))
    tables = [
        *boards,
        verdicts,
        *relations,
        safe("trajectories", lambda: _tr(frame, measures), failed("trajectories")),
        safe("status", lambda: H.status_table(frame), failed("status")),
    ]
    n_head = len(tables) - 2  # the HTML shows ranking, claims and relations, then figures, then these two
    if claims:  # a preset's claims, decided by the records (harness/report/claims.py), after the ranking
        from harness.report.claims import claims_table

        tables.insert(len(boards), safe("claims", lambda: claims_table(frame, claims), failed("claims")))
        n_head += 1
    rel_table = relations[0]
    for t in tables:
        files += safe(f"writing {t.name}", lambda t=t: write_table(t, out_dir, formats), [])
    if "html" in formats:
        figs: list[tuple[str, list[Path]]] = []
        if plots and not frame.empty:
            fig_dir = out_dir / "figures"
            fig_dir.mkdir(exist_ok=True)
            figs = [
                ("loss curves", safe("loss curves", lambda: P.loss_curves(frame, fig_dir), [])),
                ("trajectories (value vs step)", safe("trajectory figures", lambda: P.trajectory_plots(frame, fig_dir),
                                                      [])),
                ("metric figures", safe("metric figures", lambda: P.plugin_plots(frame, fig_dir), [])),
                ("finite size (log-log)", safe("finite size", lambda: P.finite_size(frame, fig_dir), [])),
                ("observable vs performance", safe("scatter", lambda: P.scatter(frame, rel_table.data, fig_dir), [])),
            ]
        page = H.render(title, [(t.name, t) for t in tables[:n_head]], figs, notes,
                        after=[(t.name, t) for t in tables[n_head:]])
        path = out_dir / "report.html"
        path.write_text(page, encoding="utf-8")
        files.append(path)
    return files, tables


def write_run_report(run_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """What the runner calls at the end of a run: ``<run_dir>/report/`` (never raises)."""
    try:
        run_dir = Path(run_dir)
        from harness.report.claims import claims_of_run

        files, _ = write_report(frame, run_dir / "report", title=f"harness run {run_dir.name}",
                                claims=claims_of_run(run_dir))
        return files
    except Exception as exc:  # noqa: BLE001 (the run's records are safe; the report is extra)
        logger.warning("run report failed: %s", exc)
        return []


def add_commands(subparsers: Any) -> None:
    """Register ``report`` and ``compare`` on the harness CLI (argparse sub-parsers)."""
    from harness.report.cli import add_commands as _add

    _add(subparsers)
