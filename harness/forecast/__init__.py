"""Forecast final downstream performance from early checkpoints, with calibrated intervals.

    >>> import harness
    >>> from harness.forecast import performance_series, forecast, backtest
    >>> perf = performance_series(harness.load_results("results/run1"))
    >>> fc = forecast(perf, methods=["last", "suite"], cutoff=0.1)        # one row per method x series x run
    >>> bt = backtest(perf)                                               # cutoffs 5/10/25/50 %
    >>> print(bt.verdict)

Pure functions of a tidy frame of performance series (`series.performance_series`), so they run
on any results root and know no family or metric: which series are performance comes from the
records' ``performance`` declaration or from selectors. Modules: ``series`` (records -> tidy
series), ``methods`` (last, curve, ensemble, suite, observables), ``conformal`` (jackknife+),
``engine`` (forecast with leave-one-run-out intervals), ``backtest`` (scores and verdict),
``plots``, ``report`` (tables), ``cli`` (``harness forecast [backtest]``). See docs/forecast.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["backtest", "forecast", "observable_series", "performance_series"]


def performance_series(frame, selectors=None):
    """Performance series (one per run and measure) from records (see `harness.forecast.series`)."""
    from harness.forecast.series import performance_series as _ps

    return _ps(frame, selectors)


def observable_series(frame, selectors=None, *, targets=()):
    """Early-observable features per run from records (see `harness.forecast.series`)."""
    from harness.forecast.series import observable_series as _os

    return _os(frame, selectors, targets=targets)


def forecast(perf, **kw: Any):
    """Forecast each series at its target step (see `harness.forecast.engine.forecast`)."""
    from harness.forecast.engine import forecast as _f

    return _f(perf, **kw)


def backtest(perf, **kw: Any):
    """Backtest the forecast methods on completed runs (see `harness.forecast.backtest.backtest`)."""
    from harness.forecast.backtest import backtest as _b

    return _b(perf, **kw)
