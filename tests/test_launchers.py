"""Sweeps through real Hydra launchers: concurrent jobs into one run root, two-stage sweeps.

Truth: one uninterrupted single-process run of the same config. A sweep split over 4 checkpoint
shards run by 4 concurrent joblib workers, followed by one trajectory/suite job, must produce
exactly its records (same record_ids, same values), none lost, none duplicated, with the suite
metric seeing every record of stage 1.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from conftest import TINY_TOY, run_harness
from harness import store
from test_fault_tolerance import _raw_ids, _run, _stable

SHARDS4 = "checkpoints.shard=0/4,1/4,2/4,3/4"


def test_four_concurrent_joblib_jobs_then_suite_stage_equal_single_run(tmp_path):
    common = (*TINY_TOY, f"results_dir={tmp_path}", "metric=[loss,time_scaling]", "report=false")
    # reference (also warms the toy family's training cache, shared by the jobs below)
    ref = run_harness(*common, "run_name=single")
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = store.load_results(tmp_path / "single")

    stage1 = run_harness("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", *common, "run_name=split",
                         SHARDS4, "++scopes=[checkpoint,pair]", env={"OMP_NUM_THREADS": "1"})
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=4" in stage1.stderr + stage1.stdout
    root = tmp_path / "split"
    statuses = [json.loads((root / str(j) / "job_status.json").read_text()) for j in range(4)]
    assert len({s["pid"] for s in statuses}) >= 2  # really ran in several worker processes
    assert "sweep of 4 jobs (0 with error records, 0 failed)" in stage1.stdout
    after1 = store.load_results(root)
    assert set(after1["metric"]) == {"loss"}  # trajectory scope held back for stage 2
    # every job wrote its own file; together: every checkpoint exactly once, no torn lines
    files = store.jsonl_files(root)
    assert len(files) == 4 and len({f.parent.name for f in files}) == 4
    for f in files:
        text = f.read_text()
        assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    raw = _raw_ids(root)
    assert len(raw) == len(set(raw)) == len(after1) == (reference["metric"] == "loss").sum()

    # stage 2: one job, same run_name, only trajectory and suite scopes, reading all of stage 1
    code, out, err = _run(tmp_path, *common[:-2], "metric=[loss,time_scaling]", "+metric.ft_suite={}",
                          "report=false", "run_name=split", "++scopes=[trajectory,suite]")
    assert code == 0, err[-3000:]
    merged = store.load_results(root)  # what `harness report` loads: all jobs, merged
    suite = merged[merged["metric"] == "ft_suite"].set_index("measure")["value"]
    n_loss = (reference["metric"] == "loss").sum()
    assert suite["n_loss_records"] == n_loss
    assert suite["n_loss_units"] == reference.loc[reference["metric"] == "loss", "unit_id"].nunique()
    mine = merged[merged["metric"] != "ft_suite"]
    assert mine["record_id"].is_unique
    pd.testing.assert_frame_equal(_stable(mine), _stable(reference), check_dtype=False)
    parquet = pd.read_parquet(root / "records.parquet")
    assert sorted(parquet["record_id"]) == sorted(merged["record_id"])


@pytest.mark.slow
def test_submitit_local_runs_jobs_and_resumes(tmp_path):
    common = (*TINY_TOY, f"results_dir={tmp_path}", "metric=loss", "model.temperature=1e-3", "report=false",
              "run_name=sub", "checkpoints.shard=0/2,1/2")
    res = run_harness("-m", "hydra/launcher=submitit_local", *common)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "sub" / ".submitit").is_dir()
    frame = store.load_results(tmp_path / "sub")
    assert len(frame) == 14 and frame["record_id"].is_unique and (frame["status"] == "ok").all()
    again = run_harness("-m", "hydra/launcher=submitit_local", *common)
    assert again.returncode == 0 and "sweep of 2 jobs" in again.stdout
    assert store.load_results(tmp_path / "sub")["record_id"].tolist() == frame["record_id"].tolist()


def test_multirun_job_with_errors_does_not_stop_the_sweep(tmp_path):
    """A user error in one job and error records in another: all jobs run, exit code says so."""
    res = run_harness("-m", *TINY_TOY, f"results_dir={tmp_path}", "run_name=mixed", "metric=loss",
                      "model.temperature=1e-3", "report=false", "model.lr=-1,30")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "sweep of 2 jobs (0 with error records, 1 failed)" in res.stdout
    assert "model.lr=-1: allowed a list of numbers > 0" in res.stdout + res.stderr  # the key and its bound
    assert len(store.load_results(tmp_path / "mixed")) == 14  # the good job finished


def test_launcher_presets_compose_and_missing_ray_is_a_clear_error(tmp_path):
    for preset, target in [("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"),
                           ("submitit_slurm", "SlurmLauncher"), ("ray", "RayLauncher")]:
        res = run_harness(f"hydra/launcher={preset}", f"results_dir={tmp_path}", "--cfg", "hydra",
                          "--package", "hydra.launcher")
        if preset == "ray" and res.returncode == 2:
            assert "pip install 'harness[ray]'" in res.stderr and "Traceback" not in res.stderr
            continue
        assert res.returncode == 0, res.stderr[-2000:]
        assert target in res.stdout


def test_bad_scopes_value_is_a_parameter_error(tmp_path):
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=x", "++scopes=[checkpoint,suit]")
    assert res.returncode == 2
    assert "scopes=" in res.stderr and "checkpoint, pair, trajectory, suite" in res.stderr
    assert "Traceback" not in res.stderr


def _slurm_script(tmp_path, monkeypatch, *overrides: str) -> tuple[object, str]:
    """The sbatch script hydra-submitit-launcher would submit for the `submitit_slurm` preset.

    SLURM cannot run here, so the two cluster touch points are cut: submitit's "is srun on PATH"
    check, and the submission itself (`map_array`, which calls sbatch). Everything before them
    is the real code: Hydra composes and validates the preset, the launcher maps its fields to
    submitit parameters (submitit rejects unknown ones), submitit writes the script.
    """
    import submitit
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    class Submitted(Exception):
        pass

    def submit(self, *args, **kwargs):
        raise Submitted(self)

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm", f"results_dir={tmp_path}", "run_name=slurm",
                                           *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        launcher = SlurmLauncher(**{k: v for k, v in cfg.hydra.launcher.items() if k != "_target_"})
        launcher.config = cfg
        with pytest.raises(Submitted) as got:
            launcher.launch([["checkpoints.shard=0/2"], ["checkpoints.shard=1/2"]], 0)
    executor = got.value.args[0]
    return executor, executor._executor._make_submission_file_text("python -m harness", "uid")


def test_submitit_slurm_preset_generates_the_sbatch_script(tmp_path, monkeypatch):
    executor, script = _slurm_script(tmp_path, monkeypatch, "hydra.launcher.partition=gpu",
                                     "hydra.launcher.setup=[module load cuda/12.4]")
    for line in ("--time=240", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=64GB", "--ntasks-per-node=1",
                 "--nodes=1", "--partition=gpu", "--signal=USR2@120", "--job-name=harness",
                 f"--output={tmp_path}/slurm/.submitit/%j/%j_0_log.out"):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "module load cuda/12.4\n" in script and script.rstrip().endswith("python -m harness")
    assert executor._executor.max_num_timeout == 3  # requeue on timeout (safe: jobs resume)
    assert executor._executor.parameters["array_parallelism"] == 64


def test_submitit_slurm_preset_field_typo_fails_at_compose(tmp_path, monkeypatch):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="partiton"):
        _slurm_script(tmp_path, monkeypatch, "hydra.launcher.partiton=gpu")


def test_ray_preset_asks_for_a_gpu_when_the_job_runs_on_cuda(tmp_path):
    for device, gpus in [("cpu", 0), ("cuda", 1), ("cuda:1", 1)]:
        res = run_harness("hydra/launcher=ray", f"device={device}", f"results_dir={tmp_path}", "--cfg", "all",
                          "--resolve")
        assert res.returncode == 0, res.stderr[-2000:]
        remote = yaml.safe_load(res.stdout)["hydra"]["launcher"]["ray"]["remote"]
        assert remote == {"num_cpus": 1, "num_gpus": gpus, "memory": 4 << 30, "max_retries": 0}
