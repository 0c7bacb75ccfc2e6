"""Forecast fitters against the scipy calls they replace: ratios, min/median/max over repeats.

    .venv/bin/python bench/bench_forecast.py [--repeats 7]

1. Curve families: variable projection (closed-form linear parameters on a shape grid, then
   `least_squares` on the shape) vs `scipy.optimize.curve_fit` on all parameters from the same
   starting points the first version used (bounded TRF). Also reports how often each reaches
   the lower residual (the grid is global; curve_fit from a few starts is local).
2. Robust regression: IRLS for the soft-L1 loss vs `scipy.optimize.least_squares(loss="soft_l1")`
   on the suite's design (7 runs x 3 columns), same minimum (asserted).
3. The whole leave-one-run-out forecast of a synthetic 8-run suite (all methods), wall time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import numpy as np


def _timeit(fn, repeats: int, number: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t) / number)
    return out


def _row(name, ref, new):
    ratio = [r / n for r, n in zip(sorted(ref), sorted(new))]
    print(f"{name:38s} ref {statistics.median(ref) * 1e3:8.3f} ms  new {statistics.median(new) * 1e3:8.3f} ms  "
          f"speed-up min/median/max {min(ratio):6.1f} / {statistics.median(ratio):6.1f} / {max(ratio):6.1f}")


def bench_curves(repeats: int) -> None:
    from scipy.optimize import curve_fit

    from harness.forecast.methods import FAMILIES, fit_family

    rng = np.random.default_rng(0)
    x = np.array([256, 512, 1000, 3000, 13000.0]) / 13000
    y = 0.6 - 0.4 * (x * 13000 / 100) ** -0.5 + rng.normal(0, 0.01, len(x))
    sigma = np.full(len(x), 0.01)
    fam = FAMILIES["pow3"]

    def ref():
        best = math.inf
        span = y[-1] - y[0]
        for p0 in ([y[-1] + 0.2 * span, -0.2 * span, 0.5], [y[-1] + span, -span, 0.5], [y[-1], -span, 0.1]):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p, _ = curve_fit(lambda x, c, a, al: c + a * x ** (-al), x, y, p0=p0, sigma=sigma,
                                     bounds=([-np.inf, -np.inf, 0.01], [np.inf, np.inf, 3.0]), maxfev=4000)
                best = min(best, float(np.sum(((fam(x, p[0], p[1], p[2]) - y) / sigma) ** 2)))
            except (RuntimeError, ValueError):
                pass
        return best

    def new():
        p = fit_family(fam, x, y, sigma)
        return float(np.sum(((fam(x, *p) - y) / sigma) ** 2))

    _row("pow3 fit (5 points)", _timeit(ref, repeats, 20), _timeit(new, repeats, 20))
    print(f"{'':38s} chi2 ref {ref():.4g}  new {new():.4g}")


def bench_robust(repeats: int) -> None:
    from scipy.optimize import least_squares

    from harness.forecast.methods import robust_lstsq

    rng = np.random.default_rng(1)
    A = np.column_stack([np.ones(7), rng.normal(size=(7, 2))])
    y = A @ [0.1, 0.05, -0.2] + rng.normal(0, 0.01, 7)
    y[3] += 0.1
    b0 = np.linalg.lstsq(A, y, rcond=None)[0]

    def ref():
        return least_squares(lambda c: A @ c - y, b0, loss="soft_l1", f_scale=0.01).x

    def new():
        return robust_lstsq(A, y, 0.01)

    assert np.allclose(ref(), new(), atol=1e-6)
    _row("soft-L1 regression (7 x 3)", _timeit(ref, repeats, 200), _timeit(new, repeats, 200))


def bench_forecast(repeats: int) -> None:
    from harness.forecast.engine import forecast
    from harness.forecast.synthetic import synthetic_series

    perf, _ = synthetic_series(n_runs=8, n_series=8, sigma=0.01, seed=0)
    times = _timeit(lambda: forecast(perf, cutoff=0.1), repeats, 1)
    print(f"{'forecast, 8 runs x 8 series, 5 methods':38s} min/median/max {min(times):.2f} / "
          f"{statistics.median(times):.2f} / {max(times):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    bench_curves(args.repeats)
    bench_robust(args.repeats)
    bench_forecast(max(3, args.repeats // 2))


if __name__ == "__main__":
    main()
