"""Sweeps on a real local Ray cluster (``hydra/launcher=ray``): no mocks, one cluster per module.

The module starts a Ray head with ``ray start`` on 127.0.0.1 (2 CPUs, no dashboard, usage stats
off, in a directory other than the driver's, so a worker's working directory differs from the
driver's as on a real cluster) and stops it in a ``finally``.

Truths:
* a single-process run of the same config: a 4-shard Ray sweep followed by a trajectory/suite
  stage (also through Ray) must give exactly its records (same record ids, same values), each
  job's records in its own file under the one run root; the suite metric must count every
  stage-1 record;
* a worker killed (SIGKILL, by pid) mid-job: exit code 3, summary line ``1 failed``, and a
  rerun of the same command ends with the reference records, none lost or duplicated;
* a run root the Ray workers cannot see (the driver's own mount namespace, a tmpfs over the
  results directory): exit code 2 before any job, and not a file written where the workers look.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray", reason="the Ray extra is not installed: pip install -c constraints.txt 'harness[ray]'")
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed: pip install 'harness[ray]'")

import psutil  # noqa: E402

from conftest import ROOT, TINY_TOY, run_harness  # noqa: E402
from harness import store  # noqa: E402
from test_fault_tolerance import TESTS, _driver, _raw_ids, _stable  # noqa: E402

SHARDS4 = "checkpoints.shard=0/4,1/4,2/4,3/4"
#: Ray on loopback only, nothing sent anywhere (no usage stats, no IP discovery towards the outside)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}


@pytest.fixture(scope="module")
def ray_address():
    """A 2-CPU Ray head on 127.0.0.1 for this module; its address (``HOST:PORT``)."""
    ray_bin = Path(sys.executable).with_name("ray")
    temp = Path(tempfile.mkdtemp(prefix="hray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, **RAY_ENV}
    try:
        start = subprocess.run([str(ray_bin), "start", "--head", "--port=0", "--num-cpus=2", "--num-gpus=0",
                                "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                f"--temp-dir={temp}"], cwd=temp, env=env, capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        address = (temp / "ray_current_cluster").read_text().strip()
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _ray(address: str, *extra: str) -> tuple[str, ...]:
    return ("-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}", *extra)


def _worker_hook(env_vars: dict[str, str] | None = None) -> str:
    """runtime_env making every Ray worker of the sweep register the test plugins (a real Ray feature)."""
    env = {"PYTHONPATH": str(TESTS), **(env_vars or {})}
    env_items = ",".join(f"{k}:'{v}'" for k, v in env.items())
    return ("+hydra.launcher.ray.init.runtime_env={worker_process_setup_hook:"
            f"test_fault_tolerance.install_test_plugins,env_vars:{{{env_items}}}}}")


def _run_driver(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m harness`` through the test driver (test metrics registered in the driver too)."""
    full_env = {**os.environ, "CI": "true", **RAY_ENV, **(env or {})}
    return subprocess.run([sys.executable, str(_driver(tmp_path)), *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_ray_sweep_then_suite_stage_equal_single_process_run(ray_address, tmp_path):
    common = (*TINY_TOY, "metric=[loss,time_scaling]", "report=false")
    ref = run_harness(*common, f"results_dir={tmp_path}", "run_name=single")
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = store.load_results(tmp_path / "single")

    # a RELATIVE results_dir: the workers run elsewhere (the cluster's cwd), the records must not
    work = tmp_path / "work"
    work.mkdir()
    stage1 = run_harness(*_ray(ray_address), *common, "results_dir=res", "run_name=split", SHARDS4,
                         "++scopes=[checkpoint,pair]", cwd=work, env=RAY_ENV)
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    assert "sweep of 4 jobs (0 with error records, 0 failed)" in stage1.stdout, stage1.stdout[-2000:]
    root = work / "res" / "split"
    statuses = [json.loads((root / str(j) / "job_status.json").read_text()) for j in range(4)]
    pids = {s["pid"] for s in statuses}
    assert len(pids) >= 2  # two Ray workers ran the jobs
    files = store.jsonl_files(root)
    assert len(files) == 4 and len({f.parent for f in files}) == 4  # each job its own file, one root
    for j, status in enumerate(statuses):  # the file is the job's own worker process's
        assert [f.name.rsplit("-", 1)[1] for f in (root / str(j)).glob("records-*.jsonl")] == [f"{status['pid']}.jsonl"]
    for f in files:
        text = f.read_text()
        assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    raw = _raw_ids(root)
    assert len(raw) == len(set(raw)) == (reference["metric"] == "loss").sum()

    # stage 2 through Ray too: one job, trajectory + suite scopes, the test suite metric in the workers
    stage2 = _run_driver(tmp_path, *_ray(ray_address, _worker_hook()), *common[:-2], "metric=[loss,time_scaling]",
                         "+metric.ft_suite={}", "report=false", "results_dir=res", "run_name=split",
                         "++scopes=[trajectory,suite]", cwd=work)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    assert "sweep of 1 jobs (0 with error records, 0 failed)" in stage2.stdout, stage2.stdout[-2000:]
    merged = store.load_results(root)
    suite = merged[merged["metric"] == "ft_suite"].set_index("measure")["value"]
    assert suite["n_loss_records"] == (reference["metric"] == "loss").sum()
    mine = merged[merged["metric"] != "ft_suite"]
    assert mine["record_id"].is_unique
    pd.testing.assert_frame_equal(_stable(mine), _stable(reference), check_dtype=False)
    parquet = pd.read_parquet(root / "records.parquet")
    assert sorted(parquet["record_id"]) == sorted(merged["record_id"])
    assert not (tmp_path / "res").exists() and not list(Path("/tmp").glob("hray-*/res"))  # nothing scattered


def _running_job_worker(root: Path, proc: subprocess.Popen, deadline: float) -> tuple[int, str]:
    """Pid and job of a Ray worker that has written a record but not finished its job."""
    while time.time() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the sweep ended ({proc.returncode}) before a job could be killed:\n"
                                 f"{out[-2000:]}\n{err[-3000:]}")
        for f in root.glob("*/records-*.jsonl"):
            job = f.parent
            if (job / "job_status.json").exists() or not f.read_text().endswith("\n"):
                continue
            pid = int(f.stem.rsplit("-", 1)[1])
            try:
                title = psutil.Process(pid).cmdline()
            except psutil.Error:
                continue
            if title and title[0].startswith("ray::"):
                return pid, job.name
        time.sleep(0.05)
    raise AssertionError(f"no running job under {root} within the time limit")


def test_killed_ray_worker_is_a_failed_job_and_a_rerun_completes_it(ray_address, tmp_path):
    common = (*TINY_TOY, "metric=loss", "+metric.ft_norm={}", "report=false", f"results_dir={tmp_path}")
    ref = _run_driver(tmp_path, *common, "run_name=single")
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = store.load_results(tmp_path / "single")

    # each ft_norm unit sleeps 1 s in the workers, so a job is still running after its first record
    sweep = (*_ray(ray_address, _worker_hook({"FT_SLEEP": "1"})), *common, "run_name=fault", SHARDS4)
    proc = subprocess.Popen([sys.executable, str(_driver(tmp_path)), *sweep], cwd=ROOT,
                            env={**os.environ, "CI": "true", **RAY_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid, job = _running_job_worker(tmp_path / "fault", proc, time.time() + 240)
        assert pid != proc.pid
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out[-2000:] + err[-3000:]
    assert "sweep of 4 jobs (0 with error records, 1 failed)" in out, out[-2000:]
    assert f"job {job}: the Ray worker running this job died" in out
    status = json.loads((tmp_path / "fault" / job / "job_status.json").read_text())
    assert status["exit_code"] == 3
    partial = store.load_results(tmp_path / "fault")
    assert 0 < len(partial) < len(reference)  # the killed job had written some records, not all

    again = _run_driver(tmp_path, *sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep of 4 jobs (0 with error records, 0 failed)" in again.stdout, again.stdout[-2000:]
    raw = _raw_ids(tmp_path / "fault")
    assert len(raw) == len(set(raw)) == len(reference)  # nothing lost, nothing duplicated
    pd.testing.assert_frame_equal(_stable(store.load_results(tmp_path / "fault")), _stable(reference),
                                  check_dtype=False)


def test_run_root_the_workers_cannot_see_stops_before_any_job(ray_address, tmp_path):
    """The driver writes to a tmpfs only its own mount namespace sees (a non-shared filesystem)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root or CAP_SYS_ADMIN) to give the driver a private filesystem")
    private = tmp_path / "private"
    private.mkdir()
    args = [sys.executable, "-m", "harness", *_ray(ray_address), *TINY_TOY, "metric=loss", "report=false",
            f"results_dir={private}", "run_name=nfs", "checkpoints.shard=0/2,1/2"]
    script = f"mount -t tmpfs tmpfs {private} && exec " + " ".join(f"'{a}'" for a in args)
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env={**os.environ, "CI": "true", **RAY_ENV},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"results root {private / 'nfs'} is not shared with every Ray node" in res.stderr
    assert "no job was started" in res.stderr and "Traceback" not in res.stderr
    assert list(private.iterdir()) == []  # the workers' view of that directory: nothing written
