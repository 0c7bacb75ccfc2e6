"""Benchmarks for sweeps: parallel jobs through the joblib launcher, and resume overhead.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sweep.py [--jobs 8] [--steps 3000] [--records 10000]

1. Eight independent toy_softmax jobs (one seed each, so each job trains its own model:
   ``steps`` SGD steps at batch 1024, 25 checkpoints, ``loss`` at every checkpoint) run
   (a) one after another by Hydra's basic launcher in one process, and (b) by the joblib
   launcher with 2 workers. Both start cold (fresh cache). Prints both wall times and the
   ratio b/a (target <= 0.65 on 2 cores). Job size: a few seconds of training and
   measuring per job, so that the ~2 s start-up of a worker process does not dominate.
2. A finished run of ``records`` records (a fake family registered in-process: 1000
   checkpoints x 10 measures) is restarted with the same run name; every unit is skipped.
   Prints the restart time (target < 5 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _harness(*args: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"harness failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall


def bench_launcher(n_jobs: int, steps: int, workdir: Path) -> tuple[float, float]:
    seeds = ",".join(str(s) for s in range(n_jobs))
    common = ["model.temperature=1e-2", f"model.steps={steps}", "model.n_checkpoints=24", "metric=loss",
              f"model.seeds={seeds}", "report=false", "print_config=false", f"results_dir={workdir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "true"}
    seq = _harness("-m", *common, "run_name=sequential", f"cache_dir={workdir / 'cache_seq'}", env=env)
    par = _harness("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *common, "run_name=joblib",
                   f"cache_dir={workdir / 'cache_par'}", env=env)
    from harness import store

    a, b = store.load_results(workdir / "sequential"), store.load_results(workdir / "joblib")
    assert len(a) == len(b) and set(a["record_id"]) == set(b["record_id"]), "the two sweeps differ"
    return seq, par


def bench_resume(n_records: int, workdir: Path) -> tuple[float, float, int]:
    from harness.api import Checkpoint, CheckpointRef, Measurement, Metric, ModelFamily, Scope
    from harness.registry import metrics, models
    from harness.runner import Runner, RunSpec

    per_unit = 10
    n_ckpt = n_records // per_unit

    class ManyFamily(ModelFamily):
        """Fake family: n checkpoints of one run, nothing to load."""

        name = "bench_many"

        def checkpoints(self):
            return [CheckpointRef(self.name, "run", "s", step) for step in range(n_ckpt)]

        def load(self, ref):
            return Checkpoint(ref)

    class ManyMetric(Metric):
        """Fake metric: `per_unit` measures per checkpoint."""

        name = "bench_many"
        scopes = (Scope.CHECKPOINT,)

        def measure(self, ctx):
            return [Measurement("m", float(i), layer=f"layer{i}") for i in range(per_unit)]

    models().register("bench_many", ManyFamily)
    metrics().register("bench_many", ManyMetric)

    def spec() -> RunSpec:
        run = workdir / "resume"
        return RunSpec(model_name="bench_many", model={}, metrics={"bench_many": {}}, data={}, checkpoints={},
                       run_dir=run, run_root=run, progress="off", report=False, cache_dir=workdir / "cache")

    t0 = time.perf_counter()
    first = Runner(spec()).run()
    t_first = time.perf_counter() - t0
    assert first.ok == n_ckpt * per_unit, first.line()
    t0 = time.perf_counter()
    again = Runner(spec()).run()
    t_resume = time.perf_counter() - t0
    assert again.units_run == 0 and again.units_skipped == n_ckpt, again.line()
    return t_first, t_resume, first.ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--skip-launcher", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_sweep-") as tmp:
        work = Path(tmp)
        if not args.skip_launcher:
            load0 = os.getloadavg()[0]
            seq, par = bench_launcher(args.jobs, args.steps, work)
            print(f"launcher: {args.jobs} toy jobs ({args.steps} steps, 25 checkpoints, loss) "
                  f"sequential {seq:.1f} s, joblib n_jobs=2 {par:.1f} s, ratio {par / seq:.2f}x (target <= 0.65); "
                  f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
                  "(other processes share the cores: the ratio only means something on an idle machine)")
        t_first, t_resume, n = bench_resume(args.records, work)
        print(f"resume: first run {n} records in {t_first:.2f} s; restart skipping all {t_resume:.2f} s "
              f"(target < 5 s); ratio restart/first {t_resume / t_first:.2f}")


if __name__ == "__main__":
    main()
