"""Benchmark: downstream scores over a trajectory. The lm_eval metric evaluates N checkpoints (same
tokenizer) through one metric instance, as a sweep does; the baseline is a bare in-process
``simple_evaluate(HFLM(model, tok), task_manager=TaskManager(include_path=..., include_defaults=False))``
on each checkpoint, the same tasks and settings. Scores must be identical (asserted).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_lm_eval.py [--checkpoints 4] [--repeat 3]
        [--limit 100] [--bootstrap-iters 0] [--tasks pydoc_cloze,pydoc_mc,pydoc_ppl] [--cli]

Defaults are the pythia_mini demo's settings (experiment=pythia_mini_demo: the three offline
tasks, limit 100, bootstrap_iters 0, batch_size 8) on a GPT-NeoX of the mini suite's ``m`` shape.
Prints min/median/max over every timed call of:

* bare ``simple_evaluate`` per checkpoint, on the shipped tasks and on the same tasks written as
  jinja templates (``doc_to_text: "{{context}}"``, as shipped before issue 18, where every
  document compiled its templates: the baseline issue 18 measured);
* the metric's first checkpoint of a run (includes building tasks, requests and tokens once);
* the metric's marginal cost per further checkpoint (forward passes + lm-eval's scoring only);

and the ratios marginal / bare (issue 18 target: <= 0.55). All scores are asserted identical. ``--cli`` also times lm-eval's command
line on a saved model directory once (issue 8: >= 5x slower than the metric).
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


def spread(xs: list[float]) -> str:
    return f"min {min(xs):6.2f}  median {statistics.median(xs):6.2f}  max {max(xs):6.2f} s  (n={len(xs)})"


def jinja_tasks(task_dir: Path, out: Path) -> Path:
    """The shipped task YAMLs with feature names written back as jinja templates (pre-issue-18)."""
    import re

    out.mkdir(parents=True, exist_ok=True)
    for y in task_dir.glob("*.yaml"):
        text = y.read_text()
        text = re.sub(r"^(doc_to_(?:text|target|choice)): (\w+)", r'\1: "{{\2}}"', text, flags=re.M)
        if "loglikelihood_rolling" in text:
            text = text.replace('doc_to_text: "{{text}}"', 'doc_to_text: ""')
        (out / y.name).write_text(text)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="runs (each a fresh metric over all checkpoints)")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--bootstrap-iters", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tasks", default="pydoc_cloze,pydoc_mc,pydoc_ppl")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also time lm-eval's command line once")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tasks = args.tasks.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench_lm_eval-"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf_datasets")

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from harness_plugins.metrics.lm_eval import LmEvalMetric
    from harness_plugins.metrics.lm_eval.data import ensure_task_dir
    from harness_plugins.metrics.lm_eval.demo import pydoc_tokenizer, save_pretrained, tiny_lm

    tok = pydoc_tokenizer()
    models = [tiny_lm(tok, hidden=args.hidden, layers=args.layers, seed=s) for s in range(args.checkpoints)]
    task_dir = ensure_task_dir(tmp / "cache")
    settings = dict(limit=args.limit, bootstrap_iters=args.bootstrap_iters, log_samples=False)

    jinja_dir = jinja_tasks(task_dir, tmp / "jinja_tasks")

    def bare(model, include=task_dir):
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
        return simple_evaluate(model=lm, tasks=tasks, **settings,
                               task_manager=TaskManager(include_path=str(include), include_defaults=False))

    bare(models[0])  # warm-up: builds the datasets cache (json -> arrow) both paths then read
    t_bare, t_jinja, t_first, t_next = [], [], [], []
    scores_bare: dict[int, dict] = {}
    for rep in range(args.repeat):
        metric = LmEvalMetric(tasks=tasks, batch_size=args.batch_size, cache_dir=str(tmp / "cache"), **settings)
        for i, model in enumerate(models):
            t0 = time.perf_counter()
            ours = metric.evaluate(model, tok)["results"]
            (t_first if i == 0 else t_next).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = bare(model)["results"]
            t_bare.append(time.perf_counter() - t0)
            assert ours == ref, f"checkpoint {i}: scores differ from simple_evaluate"
            t0 = time.perf_counter()
            ref_j = bare(model, jinja_dir)["results"]
            t_jinja.append(time.perf_counter() - t0)
            assert ours == ref_j, f"checkpoint {i}: scores differ from simple_evaluate on the jinja tasks"
            assert scores_bare.setdefault(i, ref) == ref, "simple_evaluate is not deterministic here"
    n_params = sum(p.numel() for p in models[0].parameters())
    print(f"GPT-NeoX {n_params / 1e3:.0f}k params (hidden {args.hidden}, {args.layers} layers), tasks {tasks}, "
          f"limit={args.limit}, bootstrap_iters={args.bootstrap_iters}, batch_size={args.batch_size}; "
          f"{args.checkpoints} checkpoints x {args.repeat} runs; threads={torch.get_num_threads()}")
    print(f"bare simple_evaluate per checkpoint:       {spread(t_bare)}")
    print(f"  ... on the jinja-template tasks:         {spread(t_jinja)}")
    print(f"metric, first checkpoint of a run:         {spread(t_first)}")
    print(f"metric, each further checkpoint (marginal):{spread(t_next)}")
    ratio = statistics.median(t_next) / statistics.median(t_bare)
    print(f"ratio marginal / bare (medians): {ratio:.3f} (target <= 0.55); scores identical on every checkpoint")
    print(f"ratio marginal / bare on jinja-template tasks: {statistics.median(t_next) / statistics.median(t_jinja):.3f}")
    if not args.cli:
        return
    model_dir = save_pretrained(models[0], tok, tmp / "model")
    exe = str(Path(sys.executable).with_name("lm_eval"))
    cmd = [exe, "run", "--model", "hf", "--model_args", f"pretrained={model_dir}", "dtype=float32",
           "--tasks", ",".join(tasks), "--include_path", str(task_dir), "--device", "cpu", "--batch_size",
           str(args.batch_size), "--limit", str(args.limit), "--bootstrap_iters", str(args.bootstrap_iters),
           "--output_path", str(tmp / "cli")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    t_cli = time.perf_counter() - t0
    if proc.returncode != 0:
        print("CLI failed:", proc.stderr[-2000:])
        return
    res = json.loads(Path(sorted(glob.glob(str(tmp / "cli" / "**" / "results_*.json"), recursive=True))[-1])
                     .read_text())
    same = res["results"] == scores_bare[0]
    print(f"lm_eval command line (whole process, one checkpoint): {t_cli:.2f} s; "
          f"ratio CLI / metric marginal {t_cli / statistics.median(t_next):.1f}x (issue 8: >= 5x); same scores: {same}")


if __name__ == "__main__":
    main()
