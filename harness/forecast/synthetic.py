"""A generator of performance series with a known answer, for tests and benchmarks.

Run r has size ``n_r`` (log-uniform in [1e7, 1e10] unless given); series s has a chance level
``c_s`` and a ceiling that rises with size, ``C_s(n) = c_s + (top_s - c_s) sigmoid(a_s + b_s
(log10 n - 8.5))``; its noiseless score at step t is ``C - (C - c_s) (t / t0)^-alpha_s`` (t >= t0)
and every observation adds Gaussian noise of known ``sigma``. The gain from any cutoff to any
target is then exactly linear in the value at the cutoff, so ``suite`` is correctly specified,
and each run's curve is exactly ``pow3``: a forecast's error is noise only.

    >>> perf, truth = synthetic_series(n_runs=8, n_series=3, sigma=0.01, seed=0)
    >>> truth.loc[("run03", "task1/acc")]      # the noiseless value at the target step
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.forecast.series import SERIES_COLUMNS


def synthetic_series(n_runs: int = 8, n_series: int = 3, sigma: float = 0.01, seed: int = 0,
                     steps: np.ndarray | None = None, sizes: np.ndarray | None = None,
                     t0: float = 1000.0) -> tuple[pd.DataFrame, pd.Series]:
    """(tidy series as `performance_series` returns them, noiseless values at the last step)."""
    rng = np.random.default_rng(seed)
    steps = np.asarray(steps if steps is not None else
                       np.unique(np.round(np.geomspace(t0, 100_000, 25))), float)
    sizes = np.asarray(sizes if sizes is not None else 10 ** rng.uniform(7, 10, n_runs), float)
    chance = rng.uniform(0.2, 0.5, n_series)
    top = chance + rng.uniform(0.3, 0.5, n_series)
    a = rng.uniform(-1.0, 1.0, n_series)
    b = rng.uniform(0.8, 1.5, n_series)
    alpha = rng.uniform(0.3, 0.7, n_series)
    ceil = chance[None, :] + (top - chance)[None, :] / (
        1 + np.exp(-(a[None, :] + b[None, :] * (np.log10(sizes)[:, None] - 8.5))))  # (runs, series)
    clean = ceil[:, :, None] - (ceil - chance[None, :])[:, :, None] * (steps[None, None, :] / t0) ** (
        -alpha[None, :, None])  # (runs, series, steps)
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    runs = np.array([f"run{i:02d}" for i in range(len(sizes))])
    labels = np.array([f"task{s}/acc" for s in range(n_series)])
    R, S, T = clean.shape
    ri, si, ti = (g.ravel() for g in np.meshgrid(np.arange(R), np.arange(S), np.arange(T), indexing="ij"))
    rows = {"run": runs[ri], "family": "synthetic", "model_id": runs[ri], "size": [f"{n:.3g}" for n in sizes[ri]],
            "n_params": sizes[ri], "series": labels[si], "step": steps[ti], "tokens": steps[ti] * 1e6,
            "value": noisy.ravel(), "stderr": sigma, "higher_is_better": True, "unit": None, "kind": "score"}
    truth = {(runs[r], labels[s]): float(clean[r, s, -1]) for r in range(R) for s in range(S)}
    perf = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    return perf, pd.Series(truth)


def synthetic_records(n_runs: int = 6, n_series: int = 2, sigma: float = 0.01, seed: int = 0,
                      observable: bool = True) -> pd.DataFrame:
    """The same generator as record rows (`harness.records` columns that forecasting reads),
    with the ``performance`` declaration filled; ``observable`` adds a declared-observable
    series (log of size plus noise) so the ``observables`` method has a candidate."""
    perf, _ = synthetic_series(n_runs, n_series, sigma, seed)
    rng = np.random.default_rng(seed + 1)
    task = perf["series"].str.split("/").str[0]
    rec = pd.DataFrame({
        "family": "synthetic", "model_id": perf["model_id"], "size": perf["size"], "n_params": perf["n_params"],
        "step": perf["step"], "tokens_seen": perf["tokens"], "metric": "synthetic", "measure": "acc", "task": task,
        "layer": None, "value": perf["value"], "stderr": perf["stderr"], "higher_is_better": True,
        "performance": "score", "status": "ok"})
    if observable:
        obs = perf.drop_duplicates(["run", "step"])
        rec = pd.concat([rec, pd.DataFrame({
            "family": "synthetic", "model_id": obs["model_id"], "size": obs["size"], "n_params": obs["n_params"],
            "step": obs["step"], "tokens_seen": obs["tokens"], "metric": "probe", "measure": "signal", "task": None,
            "layer": None, "value": np.log(obs["n_params"].to_numpy(float)) + rng.normal(0, 0.1, len(obs)),
            "stderr": np.nan, "higher_is_better": None, "performance": None, "status": "ok"})], ignore_index=True)
    return rec.reset_index(drop=True)
