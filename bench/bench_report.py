"""Benchmark: a full run report (leaderboard, relation, status, every file format and the HTML
page with figures) over ~10^5 synthetic records. Target: under 10 s.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_report.py [--records 100000] [--layers 40]

Shape (what a real sweep produces): 4 sizes x S checkpoints; 7 lm_eval scores and 13 model-level
observables per checkpoint, plus per-layer records of the observables (which dominate the count
and must not slow the model-level tables). Also times `compare` of the frame with itself.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness.records import RECORD_COLUMNS, normalise

SIZES = [("70m", 7e7), ("160m", 1.6e8), ("410m", 4.1e8), ("1b", 1e9)]
TASKS = [("pydoc_mc", "acc"), ("pydoc_mc", "acc_norm"), ("pydoc_cloze", "acc"), ("pydoc_cloze", "perplexity"),
         ("pydoc_ppl", "word_perplexity"), ("pydoc_ppl", "byte_perplexity"), ("pydoc_ppl", "bits_per_byte")]
N_OBS = 13


def synth(n_records: int, layers: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    per_ckpt = len(TASKS) + 1 + N_OBS + N_OBS * layers
    n_steps = max(4, n_records // (len(SIZES) * per_ckpt))
    steps = np.unique(np.round(np.logspace(0, 5, n_steps)).astype(int))
    base_rows = []
    for m, (size, n_params) in enumerate(SIZES):
        for st in steps:
            ls = np.log1p(st)
            base = dict(family="bench", model_id=f"bench-{size}", size=size, n_params=int(n_params), step=int(st),
                        checkpoint=f"step{st}", tokens_seen=int(st) * 2 * 10**6, run_id="bench", git_sha="0" * 40,
                        metric_config_hash="mc", model_config_hash="mo", status="ok", scope="checkpoint", seed=0)
            for task, meas in TASKS:
                base_rows.append({**base, "metric": "lm_eval", "task": task, "measure": meas,
                                  "value": 0.3 + 0.02 * ls + 0.05 * m + rng.normal(0, 0.02), "stderr": 0.01,
                                  "higher_is_better": meas.startswith("acc")})
            base_rows.append({**base, "metric": "loss", "measure": "loss", "higher_is_better": False,
                              "value": 6 - 0.3 * ls - 0.3 * m + rng.normal(0, 0.05)})
            for k in range(N_OBS):
                v = np.sqrt(ls) * (k + 1) + rng.normal(0, 0.5)
                base_rows.append({**base, "metric": f"obs{k % 4}", "measure": f"m{k}", "value": v})
                for layer in range(layers):
                    base_rows.append({**base, "metric": f"obs{k % 4}", "measure": f"m{k}", "layer": f"layers.{layer}",
                                      "value": v + rng.normal(0, 0.1)})
    rows = [normalise(r) for r in base_rows]
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--layers", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from harness.report import write_report
    from harness.report.compare import compare
    from harness.store import sort_records

    t0 = time.perf_counter()
    frame = sort_records(synth(args.records, args.layers))
    t_synth = time.perf_counter() - t0
    n_model = int(frame["layer"].isna().sum())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files, tables = write_report(frame, Path(tmp), formats=("md", "csv", "parquet", "html"))
        t_report = time.perf_counter() - t0
        t0 = time.perf_counter()
        cmp = compare(frame, frame)
        t_cmp = time.perf_counter() - t0
    rel = tables[1].data
    print(f"records: {len(frame)} ({n_model} model-level; synthesised in {t_synth:.1f} s)")
    print(f"leaderboard rows x cols: {tables[0].display.shape}; relation rows: {len(rel)}; files: {len(files)}")
    print(f"full report (md+csv+parquet+html with figures): {t_report:.2f} s  (target < 10 s; ratio {t_report / 10:.2f})")
    assert len(cmp) == frame["record_id"].nunique(), "compare must keep one row per record identity"
    print(f"compare(frame, frame): {t_cmp:.2f} s ({len(cmp)} rows, {(cmp['status'] == 'same').mean():.0%} same)")


if __name__ == "__main__":
    main()
