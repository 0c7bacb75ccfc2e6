"""Benchmark of the deceleration fitter: prints times and ratios (a script, not a test).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_deceleration.py [--repeats 3]

* the caballero grid search on the BNSL repo's 163,840-point grid: ``scipy.optimize.brute``
  vs the vectorised engine (same grid, same argmin);
* a zsl fit of the authors' 433-point curve, and the preprocessing of a 262,144-step log.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness_plugins.metrics.deceleration import bnsl


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    steps = np.arange(1, 262145)
    x = steps[bnsl.subsample_mask(steps)].astype(float)
    x = x[x > 100]
    y_cab = bnsl.bnsl(x, 0.5, 20.0, 0.25, 0.5, 5000.0, 0.3)
    t_brute, q_brute = best_of(lambda: bnsl.caballero_grid_best(x, y_cab, 1, None, "brute"), 1)
    t_vec, q_vec = best_of(lambda: bnsl.caballero_grid_best(x, y_cab, 1, None, "vectorized"), args.repeats)
    same = bool(np.array_equal(q_brute, q_vec))
    print(f"caballero grid (163,840 points x {len(x)} x-values): brute {t_brute:.2f} s, vectorized {t_vec:.2f} s, "
          f"ratio brute/vectorized {t_brute / t_vec:.1f}x, same argmin: {same}")

    rng = np.random.default_rng(0)
    y = bnsl.bnsl(x, 0.0, 20.0, 0.2, -0.18, 5000.0, 0.3) * np.exp(rng.normal(0, 0.005, len(x)))
    t_fit, fit = best_of(lambda: bnsl.fit_bnsl(x, y), args.repeats * 5)
    t_multi, _ = best_of(lambda: bnsl.fit_bnsl(x, y, n_starts=4, bounds=True), args.repeats)
    loss = bnsl.bnsl(steps, 0.0, 20.0, 0.2, -0.18, 5000.0, 0.3)
    t_prep, _ = best_of(lambda: bnsl.preprocess_zsl(steps, loss), args.repeats)
    print(f"zsl fit ({len(x)} points): {t_fit * 1e3:.1f} ms (t_d {fit.t_d:.0f}); bounds + 4 starts "
          f"{t_multi * 1e3:.1f} ms ({t_multi / t_fit:.1f}x); preprocessing 262,144 steps {t_prep * 1e3:.1f} ms "
          f"({t_prep / t_fit:.2f}x a fit)")
    t_cab, _ = best_of(lambda: bnsl.fit_bnsl(x, y_cab, mode="caballero", grid_engine="vectorized"), 1)
    print(f"caballero fit end to end (vectorized grid + LM): {t_cab:.2f} s ({t_cab / t_fit:.0f}x a zsl fit)")


if __name__ == "__main__":
    main()
