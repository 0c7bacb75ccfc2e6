"""Tests of the `subspace` metric against independent truths: the exact Hessian
(torch.func.hessian / torch.autograd.functional.hessian + torch.linalg.eigh), closed-form
properties of f_top and overlap, and the qualitative Gur-Ari effect on an SGD-trained
Gaussian-mixture classifier (inequalities, not exact values)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Checkpoint, CheckpointContext, CheckpointRef, PairContext, ParameterError
from harness.lm import CausalLMCheckpoint, random_token_batches, tiny_gpt_neox
from harness_plugins.metrics.subspace import SubspaceMetric
from harness_plugins.metrics.subspace.objective import FlatObjective, analysis_mode
from harness_plugins.metrics.subspace.spectrum import f_top, hutchinson_trace, subspace_overlap, top_eigenpairs

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: these products are small, and the shared CI cores are oversubscribed
    (runs after conftest's two-thread fixture, so it wins)."""
    torch.set_num_threads(1)


# ---- a tiny classifier family built in the test -----------------------------------------


def mixture(n: int, d: int = 20, classes: int = 10, seed: int = 0, sep: float = 3.0):
    """A C-class Gaussian mixture: class means of norm ``sep``, unit isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, d, generator=g)
    means = sep * means / means.norm(dim=1, keepdim=True)
    y = torch.randint(0, classes, (n,), generator=g)
    x = means[y] + torch.randn(n, d, generator=g)
    return x, y


def mlp(d: int = 20, hidden: int = 32, classes: int = 10, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(dtype)


class ClassifierCheckpoint(Checkpoint):
    """A classifier with (x, y) batches and per-example cross-entropy."""

    def __init__(self, model: nn.Module, batches, step: int = 0, model_id: str = "mix"):
        super().__init__(CheckpointRef(family="test_mix", model_id=model_id, size="s", step=step))
        self._model, self._batches = model, batches

    @property
    def model(self):
        return self._model

    def eval_batches(self, split: str = "val"):
        if split != "val":
            raise NotImplementedError(f"no split {split!r}")
        return self._batches

    def per_example_loss(self, batch, model=None):
        x, y = batch
        dtype = next(self._model.parameters()).dtype
        return F.cross_entropy((model or self._model)(x.to(dtype)), y, reduction="none")


def batches_of(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def ctx_for(ckpt, tmp_path, seed=0):
    return CheckpointContext(metric_config={}, artifact_root=tmp_path, seed=seed, checkpoint=ckpt)


def records(ms, measure):
    return {m.task: m for m in ms if m.measure == measure}


def exact_hessian(obj: FlatObjective) -> torch.Tensor:
    def f(x):
        return sum(obj.batch_sum(x, i) for i in range(len(obj.batches)))

    return torch.func.hessian(f)(obj.x0.detach())


# ---- exact Hessian on a <= 2000-parameter model -----------------------------------------


@pytest.fixture(scope="module")
def small64():
    """A partly trained 20-32-10 tanh MLP (P = 1002) in float64, with its exact Hessian."""
    x, y = mixture(512, seed=1)
    model = mlp(dtype=torch.float64, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(200):
        xb, yb = x[(i * 32) % 512 :][:32], y[(i * 32) % 512 :][:32]
        opt.zero_grad()
        F.cross_entropy(model(xb.double()), yb).backward()
        opt.step()
    ckpt = ClassifierCheckpoint(model, batches_of(x, y, 128))
    obj = FlatObjective(ckpt, ckpt.eval_batches())
    H = exact_hessian(obj)
    evals, evecs = torch.linalg.eigh(H)
    return ckpt, obj, H, evals.flip(0).numpy(), evecs.flip(1).numpy()


@pytest.mark.parametrize("method", ["double_backward", "fwd_rev", "linearize"])
def test_hvp_methods_equal_exact_hessian_times_v(small64, method):
    _, obj, H, _, _ = small64
    op = obj.hvp_operator(method)
    v = torch.randn(obj.P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hv = op(v)
    assert op.count == 1
    assert torch.allclose(hv, H @ v, rtol=1e-10, atol=1e-12)


def test_metric_eigenpairs_match_exact_hessian(small64, tmp_path):
    ckpt, obj, _, evals, evecs = small64
    metric = SubspaceMetric(ks=[1, 5, 10], n_minibatches=0)
    ms = metric.measure_checkpoint(ctx_for(ckpt, tmp_path))
    lam = records(ms, "eigenvalue")
    got = np.array([lam[f"i={i}"].value for i in range(1, 11)])
    assert np.all(np.abs(got - evals[:10]) <= 1e-4 * np.abs(evals[:10]))
    res = records(ms, "eigen_residual")
    assert max(r.value for r in res.values()) <= 1e-3
    # subspace agreement with the exact top-10 eigenvectors (read from the on-disk cache)
    (npy,) = tmp_path.rglob("step*.npy")
    V = np.load(npy)
    assert V.dtype == np.float32 and V.shape == (obj.P, 10)
    assert subspace_overlap(V, evecs[:, :10], 10) > 0.999
    # f_top of the full gradient against the exact decomposition
    g = obj.gradient().numpy()
    ft = records(ms, "f_top")
    for k in (1, 5, 10):
        expected = float(np.sum((evecs[:, :k].T @ g) ** 2) / (g @ g))
        assert ft[f"k={k}"].value == pytest.approx(expected, rel=1e-3, abs=1e-8)
        assert records(ms, "f_top_chance")[f"k={k}"].value == pytest.approx(k / obj.P)
    # product accounting: eigsh's own count plus one product per residual
    extra = lam["i=1"].extra
    assert extra["n_hvp"] == extra["n_hvp_eigsh"] + extra["n_hvp_residual"] + extra["n_hvp_trace"]
    assert extra["n_hvp_residual"] == 10 and extra["n_hvp_trace"] == 0
    assert 10 < extra["n_hvp_eigsh"] < 400
    assert records(ms, "grad_norm")[None].value == pytest.approx(float(np.linalg.norm(g)), rel=1e-10)


def test_coordinate_subset_hessian_is_the_exact_block(small64):
    """Restricting to random coordinates gives the principal sub-block H[idx, idx]."""
    ckpt, full, H, _, _ = small64
    sub = FlatObjective(ckpt, ckpt.eval_batches(), n_coords=60, seed=5)
    idx = torch.as_tensor(sub.index)
    assert len(set(sub.index.tolist())) == 60 and sub.n_selected == full.P
    assert torch.equal(sub.x0, full.x0[idx])
    block = exact_hessian(sub)
    assert torch.allclose(block, H[idx][:, idx], rtol=1e-10, atol=1e-12)
    other = FlatObjective(ckpt, ckpt.eval_batches(), n_coords=60, seed=6)
    assert other.describe()["coords_sha"] != sub.describe()["coords_sha"]
    assert FlatObjective(ckpt, ckpt.eval_batches(), n_coords=60, seed=5).describe() == sub.describe()


def test_which_LA_not_largest_magnitude():
    """A matrix whose largest-|lambda| eigenvalue is negative: top means largest algebraic."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    lam = np.concatenate([[-50.0, -40.0], np.linspace(10, 1, 58)])
    A = torch.tensor(Q @ np.diag(lam) @ Q.T)
    pairs = top_eigenpairs(lambda v: A @ v, 60, 3, dtype=torch.float64, device="cpu", tol=1e-10)
    assert np.allclose(pairs.values, lam[2:5], rtol=1e-8)


def test_hutchinson_trace_matches_exact_trace(small64):
    _, obj, H, _, _ = small64
    op = obj.hvp_operator("double_backward")
    mean, se = hutchinson_trace(op, obj.P, 200, dtype=torch.float64, device="cpu", seed=1)
    exact = float(torch.trace(H))
    assert op.count == 200
    assert abs(mean - exact) < 4 * se
    assert se < 0.5 * abs(exact)  # the estimate is informative


# ---- closed-form properties -----------------------------------------------------------


def test_f_top_span_orthogonal_random_and_overlap_identities():
    rng = np.random.default_rng(0)
    P, k = 400, 10
    V, _ = np.linalg.qr(rng.standard_normal((P, k)))
    g_in = V @ rng.standard_normal(k)
    assert f_top(V, g_in, [k])[k] == pytest.approx(1.0, abs=1e-12)
    g = rng.standard_normal(P)
    g_orth = g - V @ (V.T @ g)
    assert f_top(V, g_orth, [k])[k] == pytest.approx(0.0, abs=1e-12)
    # random g: E f_top = k / P; mean over 400 draws within 4 standard errors
    samples = np.array([f_top(V, rng.standard_normal(P), [k])[k] for _ in range(400)])
    assert abs(samples.mean() - k / P) < 4 * samples.std() / np.sqrt(len(samples))
    # f_top is monotone in k and bounded by 1
    vals = f_top(V, g, [1, 3, 10])
    assert 0 <= vals[1] <= vals[3] <= vals[10] <= 1
    assert subspace_overlap(V, V, k) == pytest.approx(1.0, abs=1e-12)
    W, _ = np.linalg.qr(rng.standard_normal((P, k)))
    assert subspace_overlap(V, W @ np.linalg.qr(rng.standard_normal((k, k)))[0], k) == pytest.approx(
        subspace_overlap(V, W, k)
    )  # basis-invariant
    rand = np.array([subspace_overlap(V, np.linalg.qr(rng.standard_normal((P, k)))[0], k) for _ in range(200)])
    assert abs(rand.mean() - k / P) < 4 * rand.std() / np.sqrt(len(rand))
    with pytest.raises(ValueError, match="zero"):
        f_top(V, np.zeros(P), [k])


# ---- SGD training of a 10-class Gaussian mixture: f_top rises well above chance ----------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Checkpoints of one SGD run (lr 0.1, batch 32) of a 20-32-10 tanh MLP."""
    x, y = mixture(2000, seed=0)
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    saved = {}
    for step in range(1501):
        if step in (0, 1000, 1500):
            saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
        idx = torch.randint(0, 2000, (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    batches = batches_of(x, y, 500)
    ckpts = {}
    for step, state in saved.items():
        m = mlp(seed=0)
        m.load_state_dict(state)
        ckpts[step] = ClassifierCheckpoint(m, batches, step=step)
    root = tmp_path_factory.mktemp("run")
    metric = SubspaceMetric(ks=[1, 10, 20], minibatch_size=32, n_minibatches=16)
    results = {s: metric.measure_checkpoint(ctx_for(c, root)) for s, c in ckpts.items()}
    return metric, ckpts, root, results


def test_f_top_rises_well_above_chance_during_sgd(trained_run):
    _, _, _, results = trained_run
    chance = records(results[1500], "f_top_chance")["k=10"].value
    assert chance == pytest.approx(10 / 1002)
    late = [records(results[s], "f_top")["k=10"].value for s in (1000, 1500)]
    assert min(late) > 15 * chance  # research note: 0.49-0.61 at steps 1000-3000 (chance 0.01)
    mb = records(results[1500], "f_top_minibatch")["k=10"]
    assert mb.n == 16 and mb.value > 5 * chance
    assert mb.extra["min"] <= mb.value <= mb.extra["max"] and mb.extra["std"] > 0
    # f_top grows with k, and the loss went down
    ft = records(results[1500], "f_top")
    assert ft["k=1"].value <= ft["k=10"].value <= ft["k=20"].value
    assert records(results[1500], "eigenvalue")["i=1"].extra["analysis_loss"] < 0.6 * records(
        results[0], "eigenvalue"
    )["i=1"].extra["analysis_loss"]


def test_pair_scope_overlap_from_cache(trained_run):
    metric, ckpts, root, _ = trained_run
    prev = ckpts[1000].ref
    pair = metric.measure_pair(PairContext(metric_config={}, artifact_root=root, seed=0, previous=prev, checkpoint=ckpts[1500]))
    op = records(pair, "overlap_previous")
    oref = records(pair, "overlap_reference")
    chance = records(pair, "overlap_chance")["k=10"].value
    assert op["k=10"].extra["n_hvp"] == 0  # read from the cache, no products
    assert op["k=10"].extra["other_step"] == 1000 and oref["k=10"].extra["other_step"] == 0
    assert 0.5 < op["k=10"].value <= 1.0 + 1e-6  # late subspace is stable (note: 0.85-0.93)
    assert op["k=10"].value > 20 * chance
    assert all(0 <= m.value <= 1 + 1e-6 for m in list(op.values()) + list(oref.values()))


def test_pair_overlap_identical_weights_is_one_and_missing_previous_is_skipped(small64, tmp_path):
    ckpt, _, _, _, _ = small64
    metric = SubspaceMetric(ks=[5], n_minibatches=0, residuals=False)
    c0 = ClassifierCheckpoint(ckpt.model, ckpt.eval_batches(), step=0)
    c1 = ClassifierCheckpoint(ckpt.model, ckpt.eval_batches(), step=7)
    metric.measure_checkpoint(ctx_for(c0, tmp_path))
    # current (step 7) not cached: the pair scope computes and caches it itself
    pair = metric.measure_pair(PairContext(metric_config={}, artifact_root=tmp_path, seed=0, previous=c0.ref, checkpoint=c1))
    m = records(pair, "overlap_previous")["k=5"]
    assert m.value == pytest.approx(1.0, abs=1e-6) and m.extra["n_hvp"] > 0
    missing = CheckpointRef(family="test_mix", model_id="mix", size="s", step=3)
    pair = metric.measure_pair(PairContext(metric_config={}, artifact_root=tmp_path, seed=0, previous=missing, checkpoint=c1))
    m = records(pair, "overlap_previous")["k=5"]
    assert m.status == "skipped" and "step 3" in m.message
    assert records(pair, "overlap_reference")["k=5"].value == pytest.approx(1.0, abs=1e-6)


# ---- a causal LM: subsets, eager attention, coordinate subsets --------------------------


def test_causal_lm_random_coordinates_match_exact_hessian_block(tmp_path):
    model = tiny_gpt_neox(hidden=16, layers=1, heads=2)
    model.set_attn_implementation("sdpa")
    ckpt = CausalLMCheckpoint(
        CheckpointRef(family="lm", model_id="tiny", size="s", step=0), model, random_token_batches(64, 2, 4, 12)
    )
    metric = SubspaceMetric(ks=[1, 4], n_coords=80, n_minibatches=2, minibatch_size=4, trace_samples=4,
                            hvp="fwd_rev")
    ms = metric.measure_checkpoint(ctx_for(ckpt, tmp_path))
    assert model.config._attn_implementation == "sdpa"  # restored after the analysis
    assert all(m.status == "ok" for m in ms), [m.message for m in ms if m.status != "ok"]
    # independent truth: the full Hessian block on those 80 coordinates by autograd
    with analysis_mode(model):
        obj = FlatObjective(ckpt, ckpt.eval_batches(), n_coords=80, seed=0)
        assert obj.n_selected == sum(p.numel() for p in model.parameters())

        def f(x):
            return sum(obj.batch_sum(x, i) for i in range(2))

        H = torch.autograd.functional.hessian(f, obj.x0.detach().double().float())
    evals = torch.linalg.eigvalsh(H.double()).flip(0).numpy()
    got = np.array([records(ms, "eigenvalue")[f"i={i}"].value for i in range(1, 5)])
    assert np.allclose(got, evals[:4], rtol=1e-3)
    tr = records(ms, "hessian_trace")[None]
    assert tr.extra["n_hvp_trace"] == 4 and tr.extra["n_hvp"] == tr.extra["n_hvp_eigsh"] + 4 + 4
    assert records(ms, "f_top_minibatch")["k=4"].n == 2


def test_causal_lm_module_subset(tmp_path):
    model = tiny_gpt_neox(hidden=16, layers=2, heads=2)
    ckpt = CausalLMCheckpoint(
        CheckpointRef(family="lm", model_id="tiny", size="s", step=0), model, random_token_batches(64, 1, 4, 12)
    )
    pattern = "gpt_neox.layers.1.mlp.*"
    expected_p = sum(p.numel() for n, p in model.named_parameters() if n.startswith("gpt_neox.layers.1.mlp."))
    ms = SubspaceMetric(ks=[2], modules=[pattern], n_minibatches=0).measure_checkpoint(ctx_for(ckpt, tmp_path))
    lam = records(ms, "eigenvalue")
    assert lam["i=1"].extra["n_params"] == expected_p
    assert lam["i=1"].value >= lam["i=2"].value
    assert max(m.value for m in records(ms, "eigen_residual").values()) <= 1e-2
    with pytest.raises(ValueError, match="match no parameter"):
        SubspaceMetric(modules=["nope.*"]).measure_checkpoint(ctx_for(ckpt, tmp_path))


# ---- skips, errors, parameters, config --------------------------------------------------


def test_skips_with_reasons(tmp_path):
    bare = ClassifierCheckpoint(mlp(), [])
    bare.eval_batches = lambda split="val": (_ for _ in ()).throw(NotImplementedError("no evaluation data"))
    (m,) = SubspaceMetric().measure_checkpoint(ctx_for(bare, tmp_path))
    assert m.status == "skipped" and "no evaluation data" in m.message
    x, y = mixture(64)
    ckpt = ClassifierCheckpoint(mlp(), batches_of(x, y, 64))
    (m,) = SubspaceMetric(max_params=100).measure_checkpoint(ctx_for(ckpt, tmp_path))
    assert m.status == "skipped" and "max_params=100" in m.message and "n_coords" in m.message
    ms = SubspaceMetric(ks=[2], minibatch_size=100, residuals=False).measure_checkpoint(ctx_for(ckpt, tmp_path))
    mb = records(ms, "f_top_minibatch")["k=2"]
    assert mb.status == "skipped" and "minibatch_size=100" in mb.message


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"ks": []}, "ks"),
        ({"ks": [0, 2]}, "ks"),
        ({"ks": [1.5]}, "ks"),
        ({"hvp": "magic"}, "hvp"),
        ({"eig_tol": 0}, "eig_tol"),
        ({"n_coords": 1}, "n_coords"),
        ({"coords_seed": -2}, "coords_seed"),
        ({"n_batches": 0}, "n_batches"),
        ({"trace_samples": 1}, "trace_samples"),
        ({"minibatch_size": 0}, "minibatch_size"),
        ({"reference_step": -1}, "reference_step"),
        ({"residuals": "yes"}, "residuals"),
        ({"modules": []}, "modules"),
        ({"kk": 3}, "kk"),
    ],
)
def test_bad_parameters_raise_parameter_error(kwargs, key):
    with pytest.raises(ParameterError) as info:
        SubspaceMetric(**kwargs)
    assert info.value.key == key and "allowed" in str(info.value)


def test_hydra_config_instantiates():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import harness.conf

    node = OmegaConf.load(Path(harness.conf.__file__).parent / "metric" / "subspace.yaml")
    assert list(node) == ["subspace"]
    metric = instantiate(node.subspace)
    assert isinstance(metric, SubspaceMetric) and metric.name == "subspace"
    assert metric.ks == [1, 2, 5, 10, 20] and metric.hvp == "double_backward"
    json.dumps(metric.params)  # params are plain JSON (hashable config)


# ---- end to end through the runner ------------------------------------------------------


def test_end_to_end_toy_softmax(tmp_path):
    """`python -m harness model=toy_softmax metric=subspace`: both scopes, no errors."""
    import os
    import subprocess
    import sys

    import pandas as pd

    cmd = [
        sys.executable, "-m", "harness", "model=toy_softmax", "metric=subspace", "model.temperature=1e-2",
        "model.steps=40", "model.batch_size=256", "model.eval_batches=1", "checkpoints=log_spaced",
        "checkpoints.num=3", "metric.subspace.ks=[1,5]", "metric.subspace.n_minibatches=2",
        f"results_dir={tmp_path}", "run_name=e2e", "print_config=false", "progress=off", "report=false",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "e2e" / "records.parquet")
    assert set(df.status) == {"ok"}, df[df.status != "ok"][["measure", "message"]].to_string()
    steps = sorted(df[df.scope == "checkpoint"].step.unique())
    assert len(steps) >= 3
    pair = df[(df.scope == "pair") & (df.measure == "overlap_previous")]
    assert len(pair) == 2 * (len(steps) - 1)
    assert pair.value.between(0, 1 + 1e-6).all()
    ft = df[df.measure == "f_top"]
    assert ft.value.between(0, 1 + 1e-9).all()
    extra = json.loads(df[df.measure == "grad_norm"].extra.iloc[0])
    assert extra["n_params"] == 32 * 128 and extra["n_hvp"] > 0
    assert list((tmp_path / "e2e" / "artifacts").rglob("step*.npy"))


def test_plots_from_records(tmp_path):
    import pandas as pd

    rows = []
    for step in (0, 10, 20):
        for k in (1, 5):
            for measure, value in (("f_top", 0.1 * k), ("f_top_chance", k / 100), ("overlap_previous", 0.9)):
                if measure == "overlap_previous" and step == 0:
                    continue
                rows.append({"metric": "subspace", "status": "ok", "model_id": "org/m", "step": step,
                             "measure": measure, "task": f"k={k}", "value": value})
    rows.append({"metric": "subspace", "status": "ok", "model_id": "org/m", "step": 0, "measure": "grad_norm",
                 "task": None, "value": 1.0})
    paths = SubspaceMetric().plots(pd.DataFrame(rows), tmp_path / "fig")
    assert [p.name for p in paths] == ["subspace_org__m.png"] and paths[0].stat().st_size > 1000
    assert SubspaceMetric().plots(pd.DataFrame(rows).assign(status="error"), tmp_path / "none") == []


def test_eval_mode_during_analysis_and_training_flag_restored(tmp_path):
    """Dropout is off during the analysis (eigenvalues match the eval-mode exact Hessian and
    two runs agree); a model handed over in train mode is left in train mode."""
    x, y = mixture(128, seed=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, 10)).train()
    ckpt = ClassifierCheckpoint(model, batches_of(x, y, 128))
    metric = SubspaceMetric(ks=[3], n_minibatches=0, residuals=False, eig_tol=1e-8)
    a = records(metric.measure_checkpoint(ctx_for(ckpt, tmp_path)), "eigenvalue")
    b = records(metric.measure_checkpoint(ctx_for(ckpt, tmp_path)), "eigenvalue")
    assert model.training
    assert a["i=1"].value == pytest.approx(b["i=1"].value, rel=1e-9)
    model.eval()
    evals = torch.linalg.eigvalsh(exact_hessian(FlatObjective(ckpt, ckpt.eval_batches()))).flip(0)
    model.train()
    assert [a[f"i={i}"].value for i in (1, 2, 3)] == pytest.approx(evals[:3].tolist(), rel=1e-4)
