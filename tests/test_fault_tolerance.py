"""Fault tolerance: SIGKILL and resume, broken checkpoints, NaN/Inf fields, failing metrics, full disks.

Truths used here:
* an uninterrupted run of the same config is the reference a killed-and-resumed run must equal
  (same record_ids, same values; timing/provenance columns ignored);
* the weight norms a test metric reports are recomputed directly from the toy family's stored
  student weights;
* NaN/Inf counts in error messages are the counts the test injected.

Test plugins are registered in-process (`harness.registry.*().register`); subprocess runs use a
small driver script that registers them and then calls `harness.app.main()`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY_TOY
from harness import store
from harness.api import Measurement, Metric
from harness.registry import metrics as metric_registry
from harness.runner import NonFiniteFieldError, Runner, RunSpec, guard_fields

TESTS = Path(__file__).resolve().parent
#: columns that legitimately differ between two runs of the same config
VOLATILE = {"run_id", "job", "started_at", "wall_time_s", "load_time_s", "peak_mem_mb", "hostname", "git_sha",
            "git_dirty", "versions", "run_config_hash", "extra"}


# ---- test plugins ---------------------------------------------------------------------------


class FtNormMetric(Metric):
    """Frobenius norm of every `weights` tensor (reads the field, so the NaN guard applies)."""

    name = "ft_norm"

    def measure_checkpoint(self, ctx):
        delay = float(os.environ.get("FT_SLEEP", "0"))
        if delay:
            time.sleep(delay)
        for tensor_name, tensor in ctx.checkpoint.field("weights"):
            yield Measurement("fro_norm", float(tensor.double().norm()), layer=tensor_name)


class FtBoomMetric(Metric):
    """Raises at one step (FT_BOOM_STEP), measures 1.0 elsewhere."""

    name = "ft_boom"

    def measure_checkpoint(self, ctx):
        if ctx.checkpoint.ref.step == int(os.environ.get("FT_BOOM_STEP", "-1")):
            raise RuntimeError(f"boom at step {ctx.checkpoint.ref.step}")
        yield Measurement("one", 1.0)


class FtSuiteMetric(Metric):
    """Suite scope: counts the ok `loss` records of the run root (what a suite metric can see)."""

    name = "ft_suite"
    reads = ("loss",)

    def measure_suite(self, ctx):
        r = ctx.records
        loss = r[(r["metric"] == "loss") & (r["status"] == "ok")]
        yield Measurement("n_loss_records", float(len(loss)))
        yield Measurement("n_loss_units", float(loss["unit_id"].nunique()), task="units")


def install_test_plugins() -> None:
    """Register the test metrics and, driven by env vars, break the toy family's load."""
    for cls in (FtNormMetric, FtBoomMetric, FtSuiteMetric):
        metric_registry().register(cls.name, cls)
    from harness_plugins.models.toy_softmax.family import ToySoftmaxFamily

    corrupt = int(os.environ.get("FT_CORRUPT_STEP", "-1"))
    nan_step = int(os.environ.get("FT_NAN_STEP", "-1"))
    inf_step = int(os.environ.get("FT_INF_STEP", "-1"))
    if getattr(ToySoftmaxFamily.load, "_ft_patched", False):
        return
    original = ToySoftmaxFamily.load

    def load(self, ref):
        if ref.step == corrupt:
            raise OSError(f"checkpoint file for step {ref.step} is truncated (header says 4096 bytes, found 100)")
        ckpt = original(self, ref)
        if ref.step in (nan_step, inf_step):
            with torch.no_grad():
                w = ckpt.model.weight
                if ref.step == nan_step:
                    w[0, :3] = float("nan")  # 3 NaN
                else:
                    w[1, 0], w[1, 1] = float("inf"), -float("inf")  # 2 Inf
        return ckpt

    load._ft_patched = True  # type: ignore[attr-defined]
    ToySoftmaxFamily.load = load


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_fault_tolerance import install_test_plugins
install_test_plugins()
from harness.app import main
main()
"""


def _driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(tests=str(TESTS)))
    return path


def _popen(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(_driver(tmp_path)), *overrides], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None, timeout: float = 240):
    proc = _popen(tmp_path, *overrides, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _stable(frame: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in frame.columns if c not in VOLATILE]
    out = frame[cols].sort_values("record_id").reset_index(drop=True).astype(object)
    return out.where(out.notna(), None)  # missing is missing, whatever the column dtype


def _raw_ids(run_dir: Path) -> list[str]:
    return [r["record_id"] for f in store.jsonl_files(run_dir) for r in store.read_jsonl(f)]


def _toy_weights(tmp_cache: Path) -> dict:
    """The toy family's stored student weights, read independently of the runner."""
    from harness_plugins.models.toy_softmax.family import ToySoftmaxFamily

    fam = ToySoftmaxFamily(**_toy_params(), temperature=[1e-3, 1e-2, 1e-1], workdir=str(tmp_cache / "families" / "toy_softmax"))
    return {(r.model_id, r.step): fam.result.student[r.meta["config_index"], r.meta["ckpt_index"]]
            for r in fam.checkpoints()}


def _toy_params() -> dict:
    kv = dict(a.split("=", 1) for a in TINY_TOY if a.startswith("model."))
    return {k[len("model."):]: int(v) for k, v in kv.items()}


# ---- SIGKILL mid-sweep, then resume ---------------------------------------------------------


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted_run(tmp_path):
    common = (*TINY_TOY, f"results_dir={tmp_path}", "metric=loss", "+metric.ft_norm={}", "report=false")
    code, out, err = _run(tmp_path, *common, "run_name=reference")
    assert code == 0, err[-3000:]
    reference = store.load_results(tmp_path / "reference")
    n_ref = len(reference)
    assert n_ref == 3 * 7 * 3  # 3 models x 7 checkpoints x (2 loss measures + 1 norm)

    run_dir = tmp_path / "killed"
    proc = _popen(tmp_path, *common, "run_name=killed", env={"FT_SLEEP": "0.25"})
    deadline = time.time() + 120
    while time.time() < deadline:
        n = len(_raw_ids(run_dir)) if run_dir.exists() else 0
        if n >= 12:
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = store.load_results(run_dir)
    assert 12 <= len(partial) < n_ref  # killed mid-sweep, not before or after
    assert not (run_dir / "records.parquet").exists()  # consolidation never ran

    code, out, err = _run(tmp_path, *common, "run_name=killed")
    assert code == 0, err[-3000:]
    assert "units already done" in out
    resumed = store.load_results(run_dir)
    # none lost, none duplicated, same values
    assert resumed["record_id"].is_unique and len(resumed) == n_ref
    raw = _raw_ids(run_dir)
    assert len(raw) == len(set(raw)) == n_ref  # no unit computed twice across the two processes
    pd.testing.assert_frame_equal(_stable(resumed), _stable(reference))
    # the records that survived the kill were kept, not recomputed
    kept = resumed.set_index("record_id").loc[partial["record_id"], "started_at"]
    assert (kept.values == partial.set_index("record_id")["started_at"].values).all()
    # no partial Parquet (or other temporary) left behind; the Parquet holds exactly the records
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    parquet = pd.read_parquet(run_dir / "records.parquet")
    assert sorted(parquet["record_id"]) == sorted(reference["record_id"])


def test_stale_parquet_temporary_of_a_dead_writer_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".records.parquet.tmp-{store._host()}-{dead.pid}"
    stale.write_bytes(b"PAR1 torn")
    other_host = tmp_path / f".records.parquet.tmp-otherhost-{dead.pid}"
    other_host.write_bytes(b"PAR1 not ours")
    alive = tmp_path / f".records.parquet.tmp-{store._host()}-{os.getppid()}"
    alive.write_bytes(b"PAR1 being written")
    with store.RecordWriter(tmp_path / "records-a.jsonl") as w:
        w.write_unit([_row("u1")])
    assert store.consolidate(tmp_path).exists()
    assert not stale.exists()  # killed writer's file removed
    assert other_host.exists() and alive.exists()  # another node's or a live writer's: untouched


# ---- broken inputs become error records; the rest completes ---------------------------------


def test_corrupt_checkpoint_nan_inf_and_raising_metric_give_error_records(tmp_path):
    env = {"FT_CORRUPT_STEP": "1", "FT_NAN_STEP": "5", "FT_INF_STEP": "12", "FT_BOOM_STEP": "26"}
    code, out, err = _run(tmp_path, *TINY_TOY, f"results_dir={tmp_path}", "run_name=faults", "metric=loss",
                          "+metric.ft_norm={}", "+metric.ft_boom={}", "report=false", env=env)
    frame = store.load_results(tmp_path / "faults")
    steps = sorted(frame["step"].dropna().unique().astype(int))
    assert {1, 5, 12, 26} <= set(steps), steps  # the injected steps are real checkpoints
    n_models = frame["model_id"].nunique()
    errors = frame[frame["status"] == "error"]
    # corrupt checkpoint: every metric at that step, every model, names the cause
    at1 = errors[errors["step"] == 1]
    assert len(at1) == 3 * n_models and at1["message"].str.contains("could not be loaded").all()
    assert at1["message"].str.contains("truncated").all()
    # NaN / Inf field: only the field-reading metric fails, with kind, tensor and counts
    nan = errors[(errors["step"] == 5)]
    assert set(nan["metric"]) == {"ft_norm"} and len(nan) == n_models
    assert nan["message"].str.contains("field 'weights' tensor 'student.weight'").all()
    assert nan["message"].str.contains("has 3 NaN and 0 Inf of 4096 values").all()
    inf = errors[(errors["step"] == 12)]
    assert set(inf["metric"]) == {"ft_norm"} and inf["message"].str.contains("0 NaN and 2 Inf").all()
    # a metric that raises
    boom = errors[errors["step"] == 26]
    assert set(boom["metric"]) == {"ft_boom"} and boom["message"].str.contains("RuntimeError: boom at step 26").all()
    # nothing else failed, and every other unit finished with true numbers
    assert len(errors) == len(at1) + len(nan) + len(inf) + len(boom)
    ok = frame[(frame["metric"] == "ft_norm") & (frame["status"] == "ok")]
    assert len(ok) == n_models * (len(steps) - 3)
    weights = _toy_weights(Path(os.environ["HARNESS_CACHE"]))
    for _, r in ok.iterrows():
        assert r["value"] == pytest.approx(float(weights[(r["model_id"], int(r["step"]))].double().norm()), rel=1e-12)
    # exit code 1; the summary line counts the failures
    assert code == 1, err[-2000:]
    assert f"{len(errors)} error records" in out
    manifest = json.loads((tmp_path / "faults" / "run.json").read_text())
    assert manifest["summary"]["error"] == len(errors)


def test_guard_fields_names_kind_tensor_and_counts():
    from harness.api import Checkpoint, CheckpointRef

    class Ck(Checkpoint):
        def field(self, kind, modules=None):
            t = torch.zeros(2, 5)
            t[0, 0] = float("nan")
            t[1, 1:3] = float("inf")
            yield "ok.weight", torch.ones(3)
            yield "bad.weight", t
            yield "int.index", torch.arange(3)

    ck = guard_fields(Ck(CheckpointRef("f", "m", "s", 5)))
    it = ck.field("delta")
    assert next(it)[0] == "ok.weight"
    with pytest.raises(NonFiniteFieldError, match=r"field 'delta' tensor 'bad.weight' of m step5 has 1 NaN and 2 Inf of 10"):
        next(it)


# ---- full disk, unwritable results root -----------------------------------------------------


def _row(unit: str, measure: str = "a"):
    from harness.records import normalise

    return normalise({"unit_id": unit, "unit_n": 1, "family": "f", "model_id": "m", "step": 1, "metric": "x",
                      "scope": "checkpoint", "measure": measure, "value": 1.0, "status": "ok", "started_at": "t"})


def _spec(tmp_path: Path, run: str, metrics: dict, **kw) -> RunSpec:
    params = _toy_params()
    params["temperature"] = 1e-3
    return RunSpec(model_name="toy_softmax", model=params, metrics=metrics, data={}, checkpoints={},
                   run_dir=tmp_path / run, run_root=tmp_path / run, progress="off", report=False, **kw)


@pytest.fixture
def test_plugins():
    """The test plugins, registered in this process only for the duration of one test."""
    from harness_plugins.models.toy_softmax.family import ToySoftmaxFamily

    original_load = ToySoftmaxFamily.load
    install_test_plugins()
    yield
    for cls in (FtNormMetric, FtBoomMetric, FtSuiteMetric):
        metric_registry()._extra.pop(cls.name, None)
    ToySoftmaxFamily.load = original_load


def test_enospc_at_first_failed_write_keeps_existing_results(tmp_path, monkeypatch, test_plugins):
    first = Runner(_spec(tmp_path, "r", {"loss": {}})).run()
    assert first.error == 0
    run = tmp_path / "r"
    before_jsonl = {p: p.read_bytes() for p in run.glob("records*.jsonl")}
    before_parquet = (run / "records.parquet").read_bytes()
    before = store.load_results(run)

    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] >= 3:  # two units fit, then the disk is full mid-unit
            real_write(fd, bytes(data)[: len(data) // 2])  # a torn half-write first
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store.os, "write", full_disk)
    runner = Runner(_spec(tmp_path, "r", {"loss": {}, "ft_norm": {}}))
    with pytest.raises(store.StoreError, match="No space left on device"):
        runner.run()
    monkeypatch.undo()
    # nothing earlier was damaged: old files byte-identical up to their old length, no torn line
    for path, data in before_jsonl.items():
        assert path.read_bytes().startswith(data)
    assert (run / "records.parquet").read_bytes() == before_parquet
    for path in run.glob("records*.jsonl"):
        assert path.read_bytes().endswith(b"\n") or path.stat().st_size == 0
    now = store.load_results(run)
    assert len(now) == len(before) + 2  # the two units written before the disk filled
    # and the run resumes cleanly once there is space again
    again = Runner(_spec(tmp_path, "r", {"loss": {}, "ft_norm": {}})).run()
    assert again.error == 0 and again.units_skipped == len(before) // 2 + 2


def test_full_disk_detected_before_any_work(tmp_path, monkeypatch):
    built = []
    from harness_plugins.models.toy_softmax.family import ToySoftmaxFamily

    monkeypatch.setattr(ToySoftmaxFamily, "prepare", lambda self: built.append(1))
    monkeypatch.setattr(store, "_free_bytes", lambda d: 1000)
    with pytest.raises(store.StoreError, match=r"has only 1000 bytes free"):
        Runner(_spec(tmp_path, "r", {"loss": {}})).run()
    assert not built


def test_unwritable_results_root_is_a_clear_error_before_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    res = subprocess.run([sys.executable, "-m", "harness", *TINY_TOY, f"results_dir={blocker}/results",
                          "run_name=x"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CI": "true"})
    assert res.returncode == 2
    assert "cannot be created" in res.stderr and "not a directory" in res.stderr
    assert "Traceback" not in res.stderr
