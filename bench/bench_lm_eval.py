"""Benchmark: the lm_eval metric on an in-memory checkpoint vs a bare in-process
``simple_evaluate`` (same model object, ``TaskManager(include_defaults=False)``) vs lm-eval's
command line on the saved model directory. Same tiny GPT-NeoX, same 200-item multiple-choice
task (pydoc_mc), identical scores required.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_lm_eval.py [--limit 200] [--repeat 3] [--no-cli]

Targets (issue 8): plugin <= 1.2x the bare call; CLI >= 5x slower than the plugin.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASK = "pydoc_mc"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-cli", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench_lm_eval-"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf_datasets")

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from harness.api import CheckpointContext, CheckpointRef
    from harness.lm import CausalLMCheckpoint
    from harness_plugins.metrics.lm_eval import LmEvalMetric
    from harness_plugins.metrics.lm_eval.data import ensure_task_dir
    from harness_plugins.metrics.lm_eval.demo import pydoc_tokenizer, save_pretrained, tiny_lm

    tok = pydoc_tokenizer()
    model = tiny_lm(tok)
    task_dir = ensure_task_dir(tmp / "cache")
    model_dir = save_pretrained(model, tok, tmp / "model")
    metric = LmEvalMetric(tasks=[TASK], limit=args.limit, batch_size=args.batch_size, cache_dir=str(tmp / "cache"))
    ckpt = CausalLMCheckpoint(CheckpointRef("bench", "tiny", "s", 0), model, tokenizer=tok)

    def plugin() -> float:
        ctx = CheckpointContext(metric_config={}, artifact_root=tmp / "art", seed=0, checkpoint=ckpt)
        recs = {r.measure: r.value for r in metric.measure(ctx)}
        return recs["acc"]

    def bare() -> float:
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
        out = simple_evaluate(model=lm, tasks=[TASK], limit=args.limit, bootstrap_iters=metric.bootstrap_iters,
                              log_samples=False,
                              task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
        return out["results"][TASK]["acc,none"]

    bare()  # warm-up: builds the datasets cache (json -> arrow) both paths then read
    times: dict[str, list[float]] = {"plugin": [], "bare": []}
    scores: dict[str, set[float]] = {"plugin": set(), "bare": set()}
    for _ in range(args.repeat):
        for name, fn in (("plugin", plugin), ("bare", bare)):
            t0 = time.perf_counter()
            scores[name].add(fn())
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tiny GPT-NeoX ({sum(p.numel() for p in model.parameters())} params), {TASK} limit={args.limit}, "
          f"batch_size={args.batch_size}, repeat={args.repeat} (median)")
    print(f"plugin (in-memory checkpoint): {med['plugin']:.2f} s  acc={sorted(scores['plugin'])}")
    print(f"bare simple_evaluate:          {med['bare']:.2f} s  acc={sorted(scores['bare'])}")
    print(f"ratio plugin/bare: {med['plugin'] / med['bare']:.2f}x (target <= 1.2x)")
    assert scores["plugin"] == scores["bare"] and len(scores["plugin"]) == 1, "scores differ"
    if args.no_cli:
        return
    exe = str(Path(sys.executable).with_name("lm_eval"))
    cmd = [exe, "run", "--model", "hf", "--model_args", f"pretrained={model_dir}", "dtype=float32",
           "--tasks", TASK, "--include_path", str(task_dir), "--device", "cpu", "--batch_size",
           str(args.batch_size), "--limit", str(args.limit), "--output_path", str(tmp / "cli")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    t_cli = time.perf_counter() - t0
    if proc.returncode != 0:
        print("CLI failed:", proc.stderr[-2000:])
        return
    res = json.loads(Path(sorted(glob.glob(str(tmp / "cli" / "**" / "results_*.json"), recursive=True))[-1])
                     .read_text())
    acc = res["results"][TASK]["acc,none"]
    print(f"lm_eval command line (whole process): {t_cli:.2f} s  acc={acc}  "
          f"(reported evaluation time {float(res.get('total_evaluation_time_seconds', 'nan')):.2f} s)")
    print(f"ratio CLI/plugin: {t_cli / med['plugin']:.1f}x (target >= 5x); same score: {acc == next(iter(scores['plugin']))}")


if __name__ == "__main__":
    main()
