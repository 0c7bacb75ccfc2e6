"""The loss_log family: logs written here in CSV, JSONL and TensorBoard come back as the
same history (the written values are the truth), one ref per file at its last step, clear
errors for bad input, and the end-to-end command of issue 5 through ``python -m harness``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.api import ConfigError, ParameterError
from harness_plugins.models.loss_log import LossLogFamily, NoWeightsError

ROOT = Path(__file__).resolve().parents[1]


def curve(n=500, start=1):
    steps = np.arange(start, start + n)
    return pd.DataFrame({"step": steps, "loss": 10.0 * steps**-0.3, "learning_rate": 1e-3 / np.sqrt(steps),
                         "tokens_seen": steps * 2048})


def test_csv_history_and_single_ref_at_last_step(tmp_path):
    df = curve()
    # shuffled rows, a re-logged step (resumed run: the later row wins), a row without loss
    messy = pd.concat([df.iloc[::-1], pd.DataFrame({"step": [250], "loss": [99.0]}),
                       pd.DataFrame({"step": [600], "loss": [None]})], ignore_index=True)
    messy.to_csv(tmp_path / "run.csv", index=False)
    fam = LossLogFamily(path=str(tmp_path / "run.csv"))
    (ref,) = fam.checkpoints()
    assert (ref.family, ref.model_id, ref.size, ref.step) == ("loss_log", "run", "run", 500)
    assert ref.tokens_seen == 500 * 2048 and ref.learning_rate == pytest.approx(1e-3 / np.sqrt(500))
    hist = fam.history("run")
    expected = df.copy()
    expected.loc[expected.step == 250, ["loss", "learning_rate", "tokens_seen"]] = [99.0, np.nan, np.nan]
    pd.testing.assert_frame_equal(hist, expected, check_dtype=False)
    assert fam.history("unknown") is None


@pytest.mark.parametrize("kind", ["lines", "array"])
def test_jsonl_with_heterogeneous_rows(tmp_path, kind):
    df = curve(200)
    rows = [dict(r) for r in df.to_dict(orient="records")]
    rows.insert(50, {"step": 50, "eval_acc": 0.3})  # an eval row without a loss: ignored
    path = tmp_path / ("log.jsonl" if kind == "lines" else "log.json")
    path.write_text("\n".join(json.dumps(r) for r in rows) if kind == "lines" else json.dumps(rows))
    hist = LossLogFamily(path=str(path)).history("log")
    np.testing.assert_allclose(hist["loss"], df["loss"])
    np.testing.assert_array_equal(hist["step"], df["step"])


def test_tensorboard_event_dir(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    df = curve(120)
    logdir = tmp_path / "tb_run"
    with SummaryWriter(str(logdir)) as w:
        for _, r in df.iterrows():
            w.add_scalar("train/loss", r["loss"], int(r["step"]))
            w.add_scalar("lr", r["learning_rate"], int(r["step"]))
    fam = LossLogFamily(path=str(logdir), loss_key="train/loss", lr_key="lr", tokens_per_step=2048)
    (ref,) = fam.checkpoints()
    assert ref.model_id == "tb_run" and ref.step == 120 and ref.tokens_seen == 120 * 2048
    hist = fam.history("tb_run")
    np.testing.assert_allclose(hist["loss"], df["loss"], rtol=1e-6)  # stored as float32
    np.testing.assert_allclose(hist["learning_rate"], df["learning_rate"], rtol=1e-6)
    # the event file itself works too, labelled by its directory
    (event,) = list(logdir.glob("events.out.tfevents*"))
    assert LossLogFamily(path=str(event), loss_key="train/loss").labels == ["tb_run"]
    with pytest.raises(ConfigError, match=r"no loss column/tag 'loss'.*train/loss"):
        LossLogFamily(path=str(logdir)).checkpoints()


def test_tensorboard_without_tbparse_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "tb").mkdir()
    monkeypatch.setitem(sys.modules, "tbparse", None)  # makes `import tbparse` fail
    with pytest.raises(ConfigError, match="tbparse"):
        LossLogFamily(path=str(tmp_path / "tb")).checkpoints()


def test_several_files_become_several_sizes(tmp_path):
    for name, n in (("70m", 300), ("160m", 400)):
        curve(n).to_csv(tmp_path / f"{name}.csv", index=False)
    fam = LossLogFamily(path=str(tmp_path / "*.csv"), n_params=[160_000_000, 70_000_000])
    refs = {r.model_id: r for r in fam.checkpoints()}
    assert set(refs) == {"70m", "160m"} and refs["160m"].step == 400 and refs["70m"].step == 300
    assert refs["160m"].n_params == 160_000_000  # glob order is sorted: 160m.csv, 70m.csv
    named = LossLogFamily(path=[str(tmp_path / "70m.csv"), str(tmp_path / "160m.csv")], sizes=["small", "big"])
    assert [r.size for r in named.checkpoints()] == ["small", "big"]


def test_row_order_steps_and_custom_columns(tmp_path):
    pd.DataFrame({"train_loss": [5.0, 4.0, 3.5], "lr": [1, 2, 3]}).to_csv(tmp_path / "x.csv", index=False)
    fam = LossLogFamily(path=str(tmp_path / "x.csv"), step_key=None, loss_key="train_loss", lr_key="lr")
    hist = fam.history("x")
    assert list(hist["step"]) == [1, 2, 3] and list(hist["learning_rate"]) == [1, 2, 3]


def test_load_raises_a_clear_no_weights_error(tmp_path):
    curve(10).to_csv(tmp_path / "a.csv", index=False)
    fam = LossLogFamily(path=str(tmp_path / "a.csv"))
    with pytest.raises(NoWeightsError, match="loss_log has no weights.*trajectory metrics"):
        fam.load(fam.checkpoints()[0])


def test_bad_parameters(tmp_path):
    curve(10).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "sub").mkdir()
    curve(10).to_csv(tmp_path / "sub" / "a.csv", index=False)
    (tmp_path / "a.parquet").write_text("x")
    cases = [
        ({}, "path"),
        ({"path": str(tmp_path / "missing.csv")}, "path"),
        ({"path": str(tmp_path / "*.nothing")}, "path"),
        ({"path": str(tmp_path / "a.parquet")}, "format"),
        ({"path": str(tmp_path / "a.csv"), "format": "xlsx"}, "format"),
        ({"path": str(tmp_path / "a.csv"), "sizes": ["a", "b"]}, "sizes"),
        ({"path": [str(tmp_path / "a.csv"), str(tmp_path / "sub" / "a.csv")]}, "sizes"),
        ({"path": str(tmp_path / "a.csv"), "tokens_per_step": 0}, "tokens_per_step"),
        ({"path": str(tmp_path / "a.csv"), "n_params": [1, 2]}, "n_params"),
    ]
    for kw, key in cases:
        with pytest.raises(ParameterError) as err:
            LossLogFamily(**kw)
        assert err.value.key == key, kw


def test_missing_loss_column_lists_what_is_there(tmp_path):
    pd.DataFrame({"step": [1, 2], "val_loss": [3.0, 2.0]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ConfigError, match=r"no loss column/tag 'loss' \(found: \['step', 'val_loss'\]\); set model.loss_key"):
        LossLogFamily(path=str(tmp_path / "a.csv")).checkpoints()


def test_config_instantiates(tmp_path):
    curve(10).to_csv(tmp_path / "a.csv", index=False)
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/loss_log.yaml"))
    assert node.pop("_target_") == "harness_plugins.models.loss_log.LossLogFamily"
    fam = LossLogFamily(**{**node, "path": str(tmp_path / "a.csv")}, data={}, workdir=str(tmp_path))
    assert fam.name == "loss_log" and len(fam.checkpoints()) == 1


def test_end_to_end_python_m_harness(tmp_path):
    """The issue's command: a CSV training log, deceleration + time_scaling, no checkpoints."""
    from harness_plugins.metrics.deceleration.bnsl import bnsl

    steps = np.arange(1, 20001)
    loss = bnsl(steps, 0.0, 20.0, 0.2, -0.18, 2000.0, 0.3)
    pd.DataFrame({"step": steps, "loss": loss}).to_csv(tmp_path / "train_loss.csv", index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "harness", "model=loss_log", f"model.path={tmp_path / 'train_loss.csv'}",
           "metric=[deceleration,time_scaling]", f"results_dir={tmp_path / 'results'}", "run_name=e2e",
           "progress=off", "print_config=false", "report=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = pd.concat([pd.read_json(p, lines=True) for p in (tmp_path / "results" / "e2e").glob("records*.jsonl")])
    dec = recs[recs.metric == "deceleration"].set_index("measure")
    assert dec.loc["t_d", "status"] == "ok" and dec.loc["t_d", "step"] == 20000
    # noiseless log, robust default (log-bin means, no smoothing window): the planted break;
    # mode=zsl would smooth and shift it by the window's log-mean factor 1.0925
    assert dec.loc["t_d", "value"] == pytest.approx(2000.0, rel=0.005)
    assert dec.loc["r_d", "value"] == pytest.approx(0.02, abs=5e-4)
    assert len(recs[recs.metric == "time_scaling"]) and (recs.status != "error").all()
