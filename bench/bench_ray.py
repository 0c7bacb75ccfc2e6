"""Benchmark: a sweep on a 2-CPU local Ray cluster vs the same sweep run sequentially.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ray.py [--jobs 8] [--steps 3000] [--repeats 3]

Needs the Ray extra (``pip install -c constraints.txt 'harness[ray]'``). The jobs are
bench_sweep.py's: ``jobs`` independent toy_softmax jobs (one seed each: ``steps`` SGD steps at
batch 1024, 25 checkpoints, ``loss`` at each). Each repeat, cold (fresh cache):

(a) sequential: Hydra's basic launcher runs the jobs one after another in one process;
(b) Ray: ``ray start --head --num-cpus=2`` on 127.0.0.1 (timed: start-up), then
    ``python -m harness -m hydra/launcher=ray hydra.launcher.ray.init.address=HOST:PORT ...``
    (timed: sweep), then ``ray stop``.

Prints min/median/max of each time and of the ratio (start-up + sweep) / sequential
(target <= 0.7 on 2 cores), and the sweep-only ratio. Both sweeps must give the same record ids.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sweep import _harness  # noqa: E402

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _ray_start(temp: Path, env: dict[str, str]) -> tuple[str, float]:
    ray = str(Path(sys.executable).with_name("ray"))
    t0 = time.perf_counter()
    res = subprocess.run([ray, "start", "--head", "--port=0", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                          "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}"],
                         cwd=temp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"ray start failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return (temp / "ray_current_cluster").read_text().strip(), wall


def _ray_stop(env: dict[str, str]) -> None:
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], env=env, capture_output=True)


def one_repeat(n_jobs: int, steps: int, work: Path) -> tuple[float, float, float]:
    seeds = ",".join(str(s) for s in range(n_jobs))
    common = ["model.temperature=1e-2", f"model.steps={steps}", "model.n_checkpoints=24", "metric=loss",
              f"model.seeds={seeds}", "report=false", "print_config=false", f"results_dir={work}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "true", **RAY_ENV}
    seq = _harness("-m", *common, "run_name=sequential", f"cache_dir={work / 'cache_seq'}", env=env)
    temp = Path(tempfile.mkdtemp(prefix="bray-", dir="/tmp"))
    try:
        address, startup = _ray_start(temp, env)
        sweep = _harness("-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}", *common,
                         "run_name=ray", f"cache_dir={work / 'cache_ray'}", env=env)
    finally:
        _ray_stop(env)
    from harness import store

    a, b = store.load_results(work / "sequential"), store.load_results(work / "ray")
    assert len(a) == len(b) and set(a["record_id"]) == set(b["record_id"]), "the two sweeps differ"
    return seq, startup, sweep


def _mmm(values: list[float], fmt: str = ".1f") -> str:
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    runs = []
    load0 = os.getloadavg()[0]
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench_ray-") as tmp:
            runs.append(one_repeat(args.jobs, args.steps, Path(tmp)))
        seq, startup, sweep = runs[-1]
        print(f"repeat {i + 1}: sequential {seq:.1f} s, Ray start-up {startup:.1f} s + sweep {sweep:.1f} s, "
              f"ratio {(startup + sweep) / seq:.2f}x (sweep only {sweep / seq:.2f}x), load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    seq = [r[0] for r in runs]
    startup = [r[1] for r in runs]
    sweep = [r[2] for r in runs]
    total = [r[1] + r[2] for r in runs]
    ratio = [t / s for t, s in zip(total, seq)]
    ratio_sweep = [w / s for w, s in zip(sweep, seq)]
    print(f"ray: {args.jobs} toy jobs ({args.steps} steps, 25 checkpoints, loss), {args.repeats} repeats, "
          f"min/median/max: sequential {_mmm(seq)} s; Ray 2-CPU local cluster: start-up {_mmm(startup)} s + "
          f"sweep {_mmm(sweep)} s; ratio (start-up + sweep)/sequential {_mmm(ratio, '.2f')}x (target <= 0.7), "
          f"sweep only {_mmm(ratio_sweep, '.2f')}x; load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (other processes share the cores: the ratio only means something on an idle machine)")


if __name__ == "__main__":
    main()
