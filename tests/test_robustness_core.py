"""Nothing silently wrong (issue 15, core): each test is one outcome that used to be wrong or a
traceback without saying so.

Truths used here:
* case 1: a run's own time_scaling fit reads exactly one loss record per selected checkpoint
  (the toy family's checkpoint count), whatever else lies under the run root;
* case 2: two runs of one config are two runs: the row count of a union is the sum of the
  counts of its parts, and a root loaded twice is one run;
* case 5: the records of two runs whose tracked versions differ are "not comparable" by the
  compare module's own definition; a gate must not pass on them;
* case 6: a report directory after a rewrite holds exactly the files the rewrite produced;
* case 7: two processes on one run_name compute each unit once: the JSONL files hold one
  attempt (one ``started_at``) per unit;
* case 8 and the tracebacks: exit code 2, one ``error:`` line naming the key, no traceback, and
  no results folder for a run that never started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, TINY_TOY, run_harness
from harness import store
from harness.runner import Runner, RunSpec

TESTS = Path(__file__).resolve().parent


def _toy(**over) -> dict:
    kv = dict(a.split("=", 1) for a in TINY_TOY if a.startswith("model."))
    params = {k[len("model."):]: int(v) for k, v in kv.items()}
    params.update(temperature=[1e-3], seeds=[0])
    params.update(over)
    return params


def _spec(root: Path, run: str, model: dict, metrics: dict, **kw) -> RunSpec:
    return RunSpec(model_name="toy_softmax", model=model, metrics=metrics, data={}, checkpoints={},
                   run_dir=root / run, run_root=root / run, progress="off", report=False, **kw)


def _n_checkpoints(frame: pd.DataFrame) -> int:
    loss = frame[(frame["metric"] == "loss") & (frame["measure"] == "loss")]
    return int(loss["step"].nunique())


# ---- case 1: trajectory/suite scopes read only records of their own configuration --------------


def test_case1_trajectory_fit_reads_only_its_own_configuration(tmp_path):
    metrics = {"loss": {}, "time_scaling": {}}
    first = Runner(_spec(tmp_path, "mix", _toy(batch_size=128), metrics)).run()
    assert first.error == 0
    frame1 = store.load_results(tmp_path / "mix")
    alpha1 = frame1[(frame1["metric"] == "time_scaling") & (frame1["measure"] == "alpha")]
    n_ckpt = _n_checkpoints(frame1)
    assert len(alpha1) == 1 and int(alpha1["n"].iloc[0]) <= n_ckpt

    second = Runner(_spec(tmp_path, "mix", _toy(batch_size=64), metrics)).run()
    assert second.error == 0
    frame = store.load_results(tmp_path / "mix")
    h2 = frame[frame["metric"] == "time_scaling"]["model_config_hash"].unique()
    assert len(h2) == 2  # two configurations under one root, one fit each
    for cfg_hash, rows in frame[(frame["metric"] == "time_scaling") & (frame["measure"] == "alpha")].groupby(
            "model_config_hash"):
        # each fit saw at most one loss record per checkpoint of its own configuration
        own = frame[(frame["model_config_hash"] == cfg_hash) & (frame["metric"] == "loss")]
        assert int(rows["n"].iloc[0]) <= _n_checkpoints(own), cfg_hash
    # and the second configuration's fit is the fit of its own curve alone: a fresh root agrees
    alone = Runner(_spec(tmp_path, "alone", _toy(batch_size=64), metrics)).run()
    assert alone.error == 0
    ref = store.load_results(tmp_path / "alone")
    ref_alpha = ref[(ref["metric"] == "time_scaling") & (ref["measure"] == "alpha")]["value"].iloc[0]
    mixed_alpha = frame[(frame["metric"] == "time_scaling") & (frame["measure"] == "alpha")
                        & (frame["model_config_hash"] == ref["model_config_hash"].iloc[0])]["value"].iloc[0]
    assert mixed_alpha == pytest.approx(ref_alpha, rel=1e-9)


# ---- case 2: many roots keep distinct runs distinct ------------------------------------------


def test_case2_load_results_keeps_runs_of_one_config_distinct(tmp_path):
    for run in ("run_a", "run_b"):
        assert Runner(_spec(tmp_path, run, _toy(), {"loss": {}})).run().error == 0
    a, b = store.load_results(tmp_path / "run_a"), store.load_results(tmp_path / "run_b")
    assert set(a["record_id"]) == set(b["record_id"])  # same config: same record identities
    both = store.load_results([tmp_path / "run_a", tmp_path / "run_b"])
    assert len(both) == len(a) + len(b)
    assert both.groupby("run_id").size().to_dict() == {"run_a": len(a), "run_b": len(b)}
    under_root = store.load_results(tmp_path)
    assert len(under_root) == len(a) + len(b) and set(under_root["run_id"]) == {"run_a", "run_b"}
    # true repeats of one run are still one run: a root given twice, its Parquet and its JSONL
    assert len(store.load_results([tmp_path / "run_a", tmp_path / "run_a"])) == len(a)
    assert len(store.load_results([tmp_path / "run_a", tmp_path / "run_a" / "records.parquet"])) == len(a)


# ---- case 5: compare --fail-if refuses what it cannot compare ---------------------------------


def _fake_versions(run: Path, torch_version: str) -> None:
    for path in store.jsonl_files(run):
        rows = store.read_jsonl(path)
        for r in rows:
            versions = json.loads(r["versions"])
            versions["torch"] = torch_version
            r["versions"] = json.dumps(versions, sort_keys=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_case5_fail_if_fails_on_not_comparable_records(tmp_path):
    from harness.cli import main

    for run in ("a", "b"):
        assert Runner(_spec(tmp_path, run, _toy(), {"loss": {}})).run().error == 0
    _fake_versions(tmp_path / "b", "0.0.1-other")
    out = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(tmp_path / "a"), str(tmp_path / "b"),
                          "--fail-if", "value:5%", "--format", "csv"], capture_output=True, text=True, cwd=ROOT)
    n = len(store.load_results(tmp_path / "a"))
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"{n} record(s) not compared" in out.stdout + out.stderr
    assert "--allow-version-change" in out.stderr
    # allowed: the values are compared (they are equal), and the output still says what was allowed
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-if", "value:5%",
                 "--allow-version-change", "--format", "csv"]) == 0


# ---- case 6: a report directory is written as a whole -----------------------------------------


def test_case6_report_directory_keeps_no_stale_files(tmp_path):
    from harness.cli import main

    assert Runner(_spec(tmp_path, "r", _toy(), {"loss": {}})).run().error == 0
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "r"), "--format", "md,csv", "--out", str(out)]) == 0
    assert list(out.glob("*.csv"))
    assert main(["report", str(tmp_path / "r"), "--format", "md", "--out", str(out)]) == 0
    assert not list(out.glob("*.csv")), sorted(p.name for p in out.iterdir())
    assert list(out.glob("*.md"))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary left beside it


def test_case6_report_refuses_to_replace_a_foreign_directory(tmp_path):
    from harness.cli import main

    assert Runner(_spec(tmp_path, "r", _toy(), {"loss": {}})).run().error == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("do not delete")
    assert main(["report", str(tmp_path / "r"), "--format", "md", "--out", str(mine)]) == 2
    assert (mine / "thesis.tex").read_text() == "do not delete"


# ---- case 7: unit claims ------------------------------------------------------------------------


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_fault_tolerance import install_test_plugins
install_test_plugins()
from harness.app import main
main()
"""


def _popen(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(TESTS)))
    full_env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(driver), *overrides], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _attempts(run: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in store.jsonl_files(run):
        for r in store.read_jsonl(path):
            out.setdefault(r["unit_id"], set()).add(r["started_at"])
    return out


def test_case7_two_processes_on_one_run_name_split_the_units(tmp_path):
    common = (*TINY_TOY, f"results_dir={tmp_path}", "run_name=shared", "model.temperature=[1e-3]", "report=false")
    first = _popen(tmp_path, *common, "metric=loss")  # trains the toy family once, writes the loss units
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-3000:]
    extra = (*common, "metric=loss", "+metric.ft_norm={}")
    procs = [_popen(tmp_path, *extra, env={"FT_SLEEP": "0.4"}) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in results]
    attempts = _attempts(tmp_path / "shared")
    frame = store.load_results(tmp_path / "shared")
    norm_units = set(frame[frame["metric"] == "ft_norm"]["unit_id"])
    assert len(norm_units) == _n_checkpoints(frame)
    doubled = {u: a for u, a in attempts.items() if len(a) > 1}
    assert not doubled, f"{len(doubled)} units computed twice"
    outs = "".join(o for o, _ in results)
    assert "claimed by another process" in outs


def test_case7_a_killed_claim_is_taken_over(tmp_path):
    from harness import unit_claims as claims

    claim_dir = tmp_path / "claims"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from harness import unit_claims as claims\n"
        "c = claims.Claims(%r)\n"
        "assert c.claim('unit-1')\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n") % (str(ROOT), str(claim_dir))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = claims.Claims(claim_dir)
        assert not mine.claim("unit-1")  # a live claim is respected
        assert mine.claim("unit-2")      # other units are free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert mine.claim("unit-1")  # the killed holder's claim died with it
    mine.release("unit-1")
    mine.release("unit-2")


# ---- case 8: top-level keys --------------------------------------------------------------------


@pytest.mark.parametrize("override, expect", [
    ("seed=-5", "seed=-5"),
    ("device=tpu", "device='tpu'"),
    ("device=cuda:0", "not available on this machine"),
    ("+seeed=3", "Did you mean: seed"),
    ("progress=sometimes", "progress='sometimes'"),
    ("+data._target_=os.system", "data._target_"),
    ("+data.seqlen=5", "Did you mean: data.seq_len"),
    ("+metric.deceleration.grid._target_=os.system", "metric.deceleration.grid._target_"),
])
def test_case8_bad_top_level_values_are_refused_before_work_starts(tmp_path, override, expect):
    if override.startswith("device=cuda"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device exists here")
    metric = "metric=deceleration" if "deceleration" in override else "metric=loss"
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=x", metric, override, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert expect in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()


def test_case8_a_run_refused_after_hydra_started_leaves_no_folder(tmp_path):
    # a family parameter error is found when the family is built, after Hydra made the run dir
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=y", "metric=loss", "model.steps=-3",
                      timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "steps" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "y").exists()


def test_run_settings_declare_every_key_of_the_primary_config():
    from omegaconf import OmegaConf

    from harness.validate import RUN_SETTINGS

    cfg = OmegaConf.load(ROOT / "conf" / "config.yaml")
    keys = {k for k in cfg.keys() if k not in ("defaults", "hydra")}
    assert keys == set(RUN_SETTINGS)
    # and every top-level key a shipped experiment preset sets is declared
    for preset in (ROOT / "conf" / "experiment").glob("*.yaml"):
        extra = {k for k in OmegaConf.load(preset).keys() if k not in ("defaults", "hydra")}
        assert extra <= set(RUN_SETTINGS) | {"model", "metric", "data", "checkpoints"}, (preset.name, extra)


# ---- tracebacks -> one clear line --------------------------------------------------------------


def test_pico_with_a_missing_local_root_is_one_line_before_work(tmp_path):
    res = run_harness(f"results_dir={tmp_path}", "run_name=p", "model=pico", "model.source=local",
                      f"model.root={tmp_path / 'no_such_run'}", "metric=loss", "print_config=false", timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "no_such_run" in res.stderr and "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "p").exists()


def test_hub_only_preset_offline_is_one_line_before_work(tmp_path):
    # model=pico's default is the Hub (its run branches are listed through the Hub API)
    res = run_harness(f"results_dir={tmp_path}", "run_name=h", "model=pico", "metric=loss",
                      "print_config=false", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "HF_HUB_OFFLINE" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "h").exists()


def test_lm_eval_task_typo_is_refused_before_any_checkpoint_loads(tmp_path):
    pytest.importorskip("lm_eval")
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=l", "metric=lm_eval",
                      "metric.lm_eval.tasks=[pydoc_clozee,pydoc_mc]", timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "pydoc_cloze" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "l").exists()
