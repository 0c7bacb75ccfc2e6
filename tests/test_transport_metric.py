"""Transport metric: fields and nulls, fits against closed forms, checkpoint and suite scopes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from harness.api import Checkpoint, CheckpointContext, CheckpointRef, Measurement, ParameterError, SuiteContext
from harness_plugins.metrics.transport import TransportMetric
from harness_plugins.metrics.transport.field import collect_field
from harness_plugins.metrics.transport.fits import SizeEvents, curvature, fit_step, loso_spread

SIZES = np.geomspace(2000, 64000, 5).astype(int)  # 1.5 decades


class FieldCheckpoint(Checkpoint):
    """A checkpoint offering one field kind made of the given tensors."""

    def __init__(self, ref: CheckpointRef, tensors: dict[str, torch.Tensor], kind: str = "delta"):
        super().__init__(ref)
        self.tensors, self.kind = tensors, kind

    def field_kinds(self):
        return (self.kind,)

    def field(self, kind, modules=None):
        assert kind == self.kind
        return iter(self.tensors.items())


def gaussian_tensors(n: int, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.0.w": torch.randn(n // 40, 20, generator=g) * scale,
            "layer.1.w": torch.randn(n // 40, 20, generator=g) * scale * 3}


def run_checkpoints(metric: TransportMetric, tensors_by_size: dict[str, dict], tmp_path, step: int = 10,
                    seed: int = 0) -> list[dict]:
    rows = []
    for size, tensors in tensors_by_size.items():
        ref = CheckpointRef("synthetic", f"run-{size}", size, step, n_params=sum(t.numel() for t in tensors.values()))
        ctx = CheckpointContext(metric_config={}, artifact_root=tmp_path, seed=seed,
                                checkpoint=FieldCheckpoint(ref, tensors))
        for ms in metric.measure_checkpoint(ctx):
            rows.append(as_row(ms, ref, "checkpoint"))
    return rows


def as_row(ms: Measurement, ref: CheckpointRef | None, scope: str) -> dict:
    return dict(metric="transport", scope=scope, measure=ms.measure, task=ms.task, layer=ms.layer,
                model_id=ref.model_id if ref else None, size=ms.size or (ref.size if ref else None),
                step=ms.step if ms.step is not None else (ref.step if ref else None), value=ms.value,
                stderr=ms.stderr, status=ms.status, message=ms.message, extra=json.dumps(ms.extra),
                n_params=ref.n_params if ref else None)


def suite(metric: TransportMetric, rows: list[dict], tmp_path) -> dict:
    ctx = SuiteContext(metric_config={}, artifact_root=tmp_path, seed=0, family="synthetic", refs=[],
                       records=pd.DataFrame(rows))
    out = list(metric.measure_suite(ctx))
    keys = [(m.measure, m.task, m.step, m.size) for m in out]
    assert len(keys) == len(set(keys)), "suite measurements must have distinct identities"
    return {(m.measure, m.task, m.step, m.size): m for m in out}


# ---- fields ---------------------------------------------------------------------------


def test_field_normalisation_and_nulls():
    u = {"a": torch.tensor([[3.0, -4.0], [0.0, 5.0]]), "b": torch.arange(1.0, 7.0)}
    f = collect_field(u.items(), "rms")
    rms_a = np.sqrt((9 + 16 + 0 + 25) / 4)
    np.testing.assert_allclose(f.values[:4], np.array([3, 4, 0, 5]) / rms_a, rtol=1e-6)
    rng = np.random.default_rng(0)
    r1 = f.permuted(rng)
    for a, b in zip(f.offsets[:-1], f.offsets[1:]):  # R1: same multiset within each tensor
        np.testing.assert_array_equal(np.sort(r1[a:b]), np.sort(f.values[a:b]))
    big = collect_field({"w": torch.randn(200, 100) * 7}.items(), "rms")
    r2 = big.gaussian(rng)
    assert np.sqrt(np.mean(r2.astype(float) ** 2)) == pytest.approx(1.0, rel=1e-6)  # RMS-normalised
    assert stats.kstest(r2, stats.halfnorm.cdf).pvalue > 1e-3  # |N(0,1)|
    robust = collect_field({"w": torch.tensor([1.0, -2.0, 3.0])}.items(), "robust")
    np.testing.assert_allclose(robust.values, np.array([1, 2, 3]) * 0.6745 / 2.0, rtol=1e-6)


def test_stratified_subsample_keeps_fraction_per_tensor():
    t = {"a": torch.randn(1000), "b": torch.randn(30, 10)}
    f = collect_field(t.items(), "rms", fraction=0.25, rng=np.random.default_rng(0))
    assert np.diff(f.offsets).tolist() == [250, 75] and f.n_full == 1300


# ---- fits against closed forms ----------------------------------------------------------


def power_law_sizes(D: float, z: float, n_events: int = 1, jitter: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i, N in enumerate(SIZES.astype(float)):
        S = 0.01 * N**D * np.exp(jitter * rng.standard_normal(n_events))
        T = 2.0 * N**z * np.exp(jitter * rng.standard_normal(n_events))
        out.append(SizeEvents(f"s{i}", N, S, T, S * 1.5))
    return out


def test_fit_recovers_exact_power_laws_and_closure():
    fit = fit_step(power_law_sizes(1.2, 0.3), n_boot=0)
    for k, v in {"D": 1.2, "z": 0.3, "beta": 0.9, "delta": -0.1, "delta_event": -0.1}.items():
        assert fit.values[k] == pytest.approx(v, abs=1e-12)
    assert fit.intercepts["D"] == pytest.approx(np.log(0.01), abs=1e-10)
    assert abs(fit.values["closure_residual_rom"]) < 1e-12
    assert fit.compress["D"]["r2"] == pytest.approx(1.0)
    assert fit.compress["D"]["loso_spread"] < 1e-12


def test_fit_matches_scipy_linregress_and_bootstrap_covers():
    data = power_law_sizes(1.0, 0.2, n_events=40, jitter=0.3, seed=3)
    fit = fit_step(data, n_boot=300, rng=np.random.default_rng(0))
    x = np.log([d.N for d in data])
    lr = stats.linregress(x, np.log([d.S.mean() for d in data]))
    assert fit.values["D"] == pytest.approx(lr.slope, rel=1e-12)
    assert fit.compress["D"]["r2"] == pytest.approx(lr.rvalue**2, rel=1e-12)
    lo, hi = fit.ci["D"]
    assert lo < 1.0 < hi and 0 < fit.stderr["D"] < 0.1
    # closure: exact for ratio-of-means, a real (non-zero) residual per event
    assert abs(fit.values["closure_residual_rom"]) < 1e-12
    assert abs(fit.values["closure_residual"]) > 1e-6


def test_curvature_test_detects_a_bend():
    x = np.log(SIZES.astype(float))
    straight = 1.0 * x + 0.01 * np.array([1, -1, 0, 1, -1])
    bent = 1.0 * x + 0.3 * (x - x.mean()) ** 2
    assert curvature(x, straight)["p"] > 0.05
    c = curvature(x, bent + 0.01 * np.array([1, -1, 0, 1, -1]))
    assert c["p"] < 0.01 and c["delta_bic"] < 0
    # the quadratic coefficient is the closed-form one
    assert c["coef"] == pytest.approx(0.3, abs=0.02)
    assert loso_spread(x, bent) > 0.05
    with pytest.raises(ValueError):
        fit_step(power_law_sizes(1, 0)[:2])


# ---- parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [("q", 1.0), ("alpha", 0.0), ("alpha", 1.5), ("graph", "tree"),
                                       ("channels", ["real", "R9"]), ("min_sizes", 2), ("n_reps", 0),
                                       ("subsample_fraction", 0.0), ("statistic", "median")])
def test_bad_parameters_name_the_key(key, value):
    with pytest.raises(ParameterError, match=key):
        TransportMetric(**{key: value})


# ---- checkpoint scope ------------------------------------------------------------------------


def test_checkpoint_records_and_artifact(tmp_path):
    met = TransportMetric(field=["gradient", "delta"], n_reps=3, event_records=2)
    rows = run_checkpoints(met, {"s": gaussian_tensors(4000, 0)}, tmp_path)
    got = {(r["measure"], r["task"], r["layer"]): r for r in rows}
    assert len(got) == len(rows)
    for ch in ("real", "R1", "R2"):
        assert got[("N", ch, None)]["value"] == 4000
        assert got[("n_events", ch, None)]["value"] == 3
        extra = json.loads(got[("S_mean", ch, None)]["extra"])
        assert extra["field_kind"] == "delta"
        ev = np.load(extra["artifact"])
        sel = ev["channel"] == ch
        assert got[("S_mean", ch, None)]["value"] == pytest.approx(ev["S"][sel].mean())
        v = got[("v_rel", ch, None)]["value"]
        assert v == pytest.approx(ev["S"][sel].mean() / (4000 * ev["T"][sel].mean()))
        assert got[("S", ch, "event0001")]["value"] == ev["S"][sel][1]
        # q = 0.99 threshold: at least 1% of the nodes topple in the first sweep
        assert got[("S_mean", ch, None)]["value"] >= 40
    assert ("T_norm", "R2", None) in got


def test_checkpoint_without_the_field_is_skipped(tmp_path):
    met = TransportMetric(field=["train_gradients"])
    rows = run_checkpoints(met, {"s": gaussian_tensors(400, 0)}, tmp_path)
    assert len(rows) == 1 and rows[0]["status"] == "skipped" and "train_gradients" in rows[0]["message"]


def test_scale_invariance_and_permutation_invariance(tmp_path):
    """x c leaves every statistic unchanged; a permuted field gives statistically equal ones."""
    base = TransportMetric(channels=["real"], n_reps=12, n_boot=0, event_records=0)
    t = gaussian_tensors(8000, 1)
    a = {r["measure"]: r for r in run_checkpoints(base, {"s": t}, tmp_path / "a")}
    b = {r["measure"]: r for r in run_checkpoints(base, {"s": {k: v * 1000 for k, v in t.items()}}, tmp_path / "b")}
    for k in ("S_mean", "T_mean", "area_mean", "v_rel"):
        assert a[k]["value"] == pytest.approx(b[k]["value"], rel=1e-6)
    g = torch.Generator().manual_seed(5)
    perm = {k: v.flatten()[torch.randperm(v.numel(), generator=g)].view_as(v) for k, v in t.items()}
    c = {r["measure"]: r for r in run_checkpoints(base, {"s": perm}, tmp_path / "c")}
    for k in ("S_mean", "T_mean"):
        se = np.hypot(a[k]["stderr"], c[k]["stderr"])
        assert abs(a[k]["value"] - c[k]["value"]) < 4 * se + 1e-9


# ---- suite scope ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    met = TransportMetric(n_reps=8, q=0.99, alpha=0.8, n_boot=200)
    rows = []
    for step in (10, 20):
        rows += run_checkpoints(met, {f"n{N}": gaussian_tensors(int(N), int(N) + step) for N in SIZES}, tmp, step=step)
    return met, rows, tmp


def test_iid_gaussian_gives_D_equal_one(gaussian_suite):
    met, rows, tmp = gaussian_suite
    out = suite(met, rows, tmp)
    for step in (10, 20):
        for ch in ("real", "R1", "R2"):
            D = out[("D", ch, step, None)]
            assert D.status == "ok" and D.n == 5
            assert abs(D.value - 1.0) < 0.03, (step, ch, D.value)
            assert D.stderr is not None and D.extra["ci_low"] < D.extra["ci_high"]
            # ratio-of-means closure is exact; per-event residual is reported
            assert abs(out[("closure_residual_rom", ch, step, None)].value) < 1e-10
            assert out[("closure_residual", ch, step, None)].status == "ok"
            assert out[("D_r2", ch, step, None)].value > 0.99
            assert out[("D_curvature_p", ch, step, None)].status == "ok"
            for size in (f"n{N}" for N in SIZES):
                assert out[("v_rel", ch, step, size)].value > 0
        # a Gaussian field is its own R2 null: departures are within a few standard errors
        dep = out[("D_departure", "R2", step, None)]
        assert abs(dep.value) < 4 * dep.stderr + 0.01
        assert ("T_norm", "R1", step, f"n{SIZES[0]}") in out


def test_fewer_than_three_sizes_are_skipped(gaussian_suite):
    met, rows, tmp = gaussian_suite
    two = [r for r in rows if r["size"] in (f"n{SIZES[0]}", f"n{SIZES[1]}")]
    out = suite(met, two, tmp)
    assert out and all(m.status == "skipped" and m.value is None for m in out.values())
    assert "found 2" in out[("D", "real", None, None)].message
    # three sizes at one step but two at another: the short step is skipped, the other fitted
    three = [r for r in rows if r["size"] in {f"n{N}" for N in SIZES[:3]} and
             (r["step"] == 10 or r["size"] != f"n{SIZES[2]}")]
    out = suite(met, three, tmp)
    assert out[("D", "real", 10, None)].status == "ok"
    assert out[("D", "real", 20, None)].status == "skipped" and "2 included sizes" in out[("D", "real", 20, None)].message
    assert out[("D_curvature_p", "real", 10, None)].status == "skipped"  # 3 sizes: no curvature dof


def test_subsampling_keeps_exponents(tmp_path):
    """Stratified subsampling at two fractions gives the same exponents on synthetic fields."""
    sizes = np.geomspace(16000, 256000, 4).astype(int)
    tensors = {f"n{N}": gaussian_tensors(int(N), int(N)) for N in sizes}
    res = {}
    for f in (0.5, 0.25):
        met = TransportMetric(n_reps=6, channels=["real"], subsample_fraction=f, n_boot=100, event_records=0)
        out = suite(met, run_checkpoints(met, tensors, tmp_path / str(f)), tmp_path / str(f))
        res[f] = out
    for e in ("D", "z"):
        a, b = res[0.5][(e, "real", 10, None)], res[0.25][(e, "real", 10, None)]
        assert abs(a.value - b.value) < 3 * np.hypot(a.stderr, b.stderr) + 0.02, (e, a.value, b.value)
