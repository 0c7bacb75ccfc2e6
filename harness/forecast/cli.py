"""``harness forecast`` and ``harness forecast backtest`` (argparse subcommand; rich output).

    harness forecast RUN... [--cutoff 0.1|STEP] [--target-step N] [--method last,suite,...]
                            [--series GLOB...] [--features GLOB...] [--level 0.9] [--out DIR]
    harness forecast backtest RUN... [--cutoffs 0.05,0.1,0.25,0.5] [same options]

Both read records with `harness.load_results`; files go to ``--out`` (default
``<first run>/forecast``): ``forecast.csv`` or ``backtest.csv``/``backtest.md``/
``backtest_forecasts.csv`` and the two figures.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)

ALL_METHODS = ("last", "curve", "ensemble", "suite", "observables")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _csv(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from exc


def add_commands(subparsers) -> None:
    """Add ``forecast`` (and ``forecast backtest``) to the ``harness`` command."""
    p = subparsers.add_parser(
        "forecast", help="forecast final performance from early checkpoints (or: forecast backtest RUN...)",
        description="Forecast every performance series of every run at a target step from its points up to a "
                    "cutoff, with leave-one-run-out conformal intervals. 'harness forecast backtest RUN...' "
                    "holds out each completed run in turn and scores the methods.")
    p.add_argument("runs", nargs="+", help="[backtest] run directories or results roots")
    p.add_argument("--method", type=_csv, default=ALL_METHODS, help=f"comma-separated, from {', '.join(ALL_METHODS)}")
    p.add_argument("--cutoff", type=float, default=0.1, help="fraction of the target step (<= 1) or a step (> 1)")
    p.add_argument("--cutoffs", type=_floats, default=None, help="backtest cutoffs (default 0.05,0.1,0.25,0.5)")
    p.add_argument("--target-step", type=float, default=None,
                   help="step to forecast (default: the last step any run of the series reached)")
    p.add_argument("--level", type=float, default=0.9, help="interval level (default 0.9)")
    p.add_argument("--series", nargs="*", default=None,
                   help="series to forecast, globs metric:measure[:task] (default: declared performance series)")
    p.add_argument("--features", nargs="*", default=None,
                   help="observables for the 'observables' method (default: declared observables and loss series)")
    p.add_argument("--scale", choices=("residual", "stderr", "none"), default="residual",
                   help="per-series scale of the pooled conformal scores")
    p.add_argument("--pool", choices=("all", "series"), default="all", help="pool calibration residuals over series")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: <first run>/forecast)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.set_defaults(func=run_forecast)


def _console():
    from harness.report.cli import _console as report_console

    return report_console()  # the report's rule: piped output is not cut to 80 columns


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _inputs(args: argparse.Namespace):
    import harness
    from harness.forecast.series import ForecastError, observable_series, performance_series

    roots = [Path(r) for r in args.runs]
    frame = harness.load_results(roots)
    perf = performance_series(frame, args.series)
    feats = observable_series(frame, args.features, targets=list(perf["series"].unique()))
    bad = [m for m in args.method if m not in ALL_METHODS]
    if bad:
        raise ForecastError(f"unknown forecast method(s) {', '.join(bad)}; choose from {', '.join(ALL_METHODS)}")
    out = args.out or (roots[0] if roots[0].is_dir() else roots[0].parent) / "forecast"
    return perf, feats, out


def run_forecast(args: argparse.Namespace) -> int:
    """``harness forecast RUN...``: forecast every run's performance at the target step."""
    if args.runs and args.runs[0] == "backtest":
        args.runs = args.runs[1:]
        if not args.runs:
            from harness.forecast.series import ForecastError

            raise ForecastError("harness forecast backtest needs at least one run directory")
        return run_backtest(args)
    from rich.table import Table

    from harness.forecast.engine import forecast

    perf, feats, out = _inputs(args)
    fc = forecast(perf, methods=args.method, cutoff=args.cutoff, target_step=args.target_step, level=args.level,
                  features=feats, scale=args.scale, pool=args.pool)
    out.mkdir(parents=True, exist_ok=True)
    fc.to_csv(out / "forecast.csv", index=False)
    methods = list(dict.fromkeys(fc["method"]))
    t = Table(title=f"forecast at the target step from cutoff {args.cutoff:g} ({args.level:.0%} intervals)")
    for c in ("run", "series", "cutoff step", "target step", *methods, "realised"):
        t.add_column(c, justify="left" if c in ("run", "series") else "right")
    skipped = 0
    for (run, series), g in fc.groupby(["run", "series"], sort=True):
        cells = []
        by_m = {r["method"]: r for _, r in g.iterrows()}
        for m in methods:
            r = by_m.get(m)
            if r is None or r["status"] != "ok":
                skipped += 1
                cells.append("skipped")
            else:
                cells.append(f"{_fmt(r['prediction'])} [{_fmt(r['lower'], 3)}, {_fmt(r['upper'], 3)}]")
        first = g.iloc[0]
        t.add_row(run, series, _fmt(first["cutoff_step"], 6), _fmt(first["target_step"], 6), *cells,
                  _fmt(first["realised"]) if first["realised"] is not None else "")
    con = _console()
    con.print(t)
    if skipped:
        con.print(f"{skipped} forecasts skipped; reasons in {out / 'forecast.csv'} (column 'reason')")
    con.print(f"forecast: {int((fc['status'] == 'ok').sum())} forecasts, {fc['run'].nunique()} runs, "
              f"{fc['series'].nunique()} series -> {out / 'forecast.csv'}")
    return 0


def run_backtest(args: argparse.Namespace) -> int:
    """``harness forecast backtest RUN...``: score the methods on held-out completed runs."""
    from harness.forecast import plots
    from harness.forecast.backtest import DEFAULT_CUTOFFS, backtest
    from harness.forecast.report import summary_tables

    perf, feats, out = _inputs(args)
    cutoffs = args.cutoffs or DEFAULT_CUTOFFS
    bt = backtest(perf, cutoffs=cutoffs, level=args.level, methods=args.method, target_step=args.target_step,
                  features=feats, scale=args.scale, pool=args.pool)
    out.mkdir(parents=True, exist_ok=True)
    bt.summary.to_csv(out / "backtest.csv", index=False)
    bt.forecasts.to_csv(out / "backtest_forecasts.csv", index=False)
    overall, per_series, md = summary_tables(bt)
    (out / "backtest.md").write_text(md, encoding="utf-8")
    files = [out / "backtest.csv", out / "backtest_forecasts.csv", out / "backtest.md"]
    if not args.no_plots:
        at = min(cutoffs, key=lambda c: abs(c - 0.1))
        files.append(plots.predicted_vs_realised(bt.forecasts, at, out / "backtest_predicted_vs_realised.png", bt.level))
        files.append(plots.mae_vs_cutoff(bt.summary, out / "backtest_mae_vs_cutoff.png"))
    con = _console()
    con.print(per_series)
    con.print(overall)
    con.print(f"verdict: {bt.verdict}")
    con.print("files: " + ", ".join(str(f) for f in files))
    return 0
