"""End to end through ``python -m harness`` and ``harness``, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from conftest import ROOT, TINY_TOY, run_harness
from harness import store


def _records(run_dir):
    return store.load_results(run_dir)


def test_default_run_writes_records_and_table(tmp_path):
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=demo")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "demo"
    assert (run / "records.parquet").exists() and (run / "run.json").exists()
    assert (run / ".hydra" / "config.yaml").exists() and (run / "config_tree.txt").exists()
    assert (run / "harness.log").exists()
    frame = _records(run)
    assert set(frame["metric"]) == {"loss", "time_scaling"}
    assert (frame["status"] == "ok").all(), frame[frame["status"] != "ok"][["metric", "message"]]
    assert frame["record_id"].is_unique
    assert "leaderboard" in res.stdout and "rank" in res.stdout  # the ranking first, one row per model
    assert "harness:" in res.stdout and "0 error records" in res.stdout
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["summary"]["error"] == 0 and manifest["plugins"]["model"]["name"] == "toy_softmax"


def test_single_metric_scalar_override_and_list(tmp_path):
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=a", "metric=time_scaling",
                      "model.temperature=1e-3")
    assert res.returncode == 0, res.stderr[-3000:]
    frame = _records(tmp_path / "a")
    assert set(frame["metric"]) == {"time_scaling"}
    assert frame["model_id"].nunique() == 1 and "T=0.001" in frame["model_id"].iloc[0]
    # the training log stands in for missing loss records
    alpha = frame[frame["measure"] == "alpha"].iloc[0]
    assert "training log" in json.loads(alpha["extra"])["source"]
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=b", "metric=[time_scaling,loss]")
    assert res.returncode == 0, res.stderr[-3000:]
    assert set(_records(tmp_path / "b")["metric"]) == {"loss", "time_scaling"}


def test_multirun_over_temperatures(tmp_path):
    res = run_harness("-m", *TINY_TOY, f"results_dir={tmp_path}", "run_name=sweep", "metric=loss",
                      "model.temperature=1e-3,1e-2")
    assert res.returncode == 0, res.stderr[-3000:]
    frame = _records(tmp_path / "sweep")
    assert frame["model_id"].nunique() == 2
    assert {"0", "1"} <= {p.name for p in (tmp_path / "sweep").iterdir()}
    assert (tmp_path / "sweep" / "records.parquet").exists()


def test_resume_skips_finished_units(tmp_path):
    args = (*TINY_TOY, f"results_dir={tmp_path}", "run_name=r", "model.temperature=1e-3")
    first = run_harness(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _records(tmp_path / "r")
    second = run_harness(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 units run" in second.stdout and "units already done" in second.stdout
    after = _records(tmp_path / "r")
    pd.testing.assert_frame_equal(before, after)


def test_typo_in_plugin_name_did_you_mean(tmp_path):
    res = run_harness("model=toy_sofmax", f"results_dir={tmp_path}")
    assert res.returncode == 2
    assert "did you mean: toy_softmax?" in res.stderr.lower() and "Traceback" not in res.stderr
    assert "Available models:" in res.stderr
    res = run_harness("metric=[loss,time_scalng]", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "time_scaling" in res.stderr and "Traceback" not in res.stderr
    res = run_harness("checkpoints=log_spacd", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "log_spaced" in res.stderr


def test_bad_parameter_names_key_and_range(tmp_path):
    res = run_harness("model.temperature=-1", "print_config=false", f"results_dir={tmp_path}")
    assert res.returncode == 2, res.stderr
    assert "model.temperature=-1" in res.stderr and "> 0" in res.stderr and "Traceback" not in res.stderr
    res = run_harness("model.optimizer=rmsprop", "print_config=false", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "model.optimizer" in res.stderr and "sgd, adam" in res.stderr
    res = run_harness("checkpoints.shard=5/2", "print_config=false", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "checkpoints.shard" in res.stderr


def test_untrusted_target_is_refused(tmp_path):
    res = run_harness("model._target_=os.system", "print_config=false", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "not the registered plugin class" in res.stderr


def test_ls_lists_plugins_without_torch():
    code = ("import sys; from harness.cli import main; rc = main(['ls', 'metrics']); "
            "assert rc == 0; assert 'torch' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "time_scaling" in res.stdout and "loss" in res.stdout


def test_unknown_parameter_key_did_you_mean(tmp_path):
    res = run_harness("model.temprature=1", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Unknown parameter 'model.temprature'" in res.stderr and "Did you mean: model.temperature" in res.stderr
    res = run_harness("metric=loss", "metric.loss.splt=val", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "metric.loss.split" in res.stderr
