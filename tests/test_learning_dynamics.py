"""harness.learning_dynamics: pico-train's file format, safety, atomic writes, gradient scale."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

from harness import learning_dynamics as ld

PREFIX = "_forward_module.module."


def sample(layers: int = 2, n: int = 5, seed: int = 0, prefix: str = PREFIX) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"attention.v_proj": (4, 8), "attention.o_proj": (8, 8), "swiglu.w_2": (8, 16)}
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in ld.KINDS}
    for i in range(layers):
        for mod, (o, inp) in shapes.items():
            name = f"{prefix}layers.{i}.{mod}"
            out["activations"][name] = torch.randn(n, o, generator=g)
            out["weights"][name] = torch.randn(o, inp, generator=g)
            out["gradients"][name] = torch.randn(o, inp, generator=g)
    return out


def test_import_is_light():
    code = "import harness.learning_dynamics, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("key,want", [
    ("_forward_module.module.layers.3.attention.v_proj", (3, "attention.v_proj")),
    ("_forward_module.layers.11.swiglu.w_2", (11, "swiglu.w_2")),
    ("layers.0.attention.o_proj", (0, "attention.o_proj")),
    ("pico_decoder.layers.7.swiglu.w_2.weight", (7, "swiglu.w_2")),
])
def test_parse_key_ignores_wrapper_prefix(key, want):
    assert ld.parse_key(key) == want


def test_parse_key_refuses_layerless_names():
    with pytest.raises(ld.LearningDynamicsError, match="names no layer"):
        ld.parse_key("embedding_proj")


def test_roundtrip_in_pico_layout_with_dtype_cast(tmp_path):
    data = sample()
    data["activations"] = {k: v.bfloat16() for k, v in data["activations"].items()}  # as pico's train split
    files = ld.write(tmp_path, 1000, "train", data)
    d = tmp_path / "checkpoints" / "step_1000" / "learning_dynamics"
    assert sorted(p.name for p in files) == ["train_activations.pt", "train_gradients.pt", "train_weights.pt"]
    assert all(p.parent == d for p in files)
    assert not list(d.glob("*.tmp"))
    step = ld.StepDynamics(d, step=1000)
    acts = step.get("train", "activations")
    assert set(acts) == {(i, m) for i in range(2) for m in ld.DEFAULT_MODULES}
    assert all(t.dtype == torch.float32 for t in acts.values())
    name = PREFIX + "layers.1.swiglu.w_2"
    assert torch.equal(acts[(1, "swiglu.w_2")], data["activations"][name].float())
    assert torch.equal(step.get("train", "weights")[(0, "attention.v_proj")], data["weights"][PREFIX + "layers.0.attention.v_proj"])
    # raw file is exactly pico-train's: a flat dict keyed by the original module names
    raw = torch.load(d / "train_gradients.pt", weights_only=True)
    assert set(raw) == set(data["gradients"])


def test_each_file_is_read_once(tmp_path):
    ld.write(tmp_path, 0, "val", sample())
    step = ld.StepDynamics(ld.learning_dynamics_dir(tmp_path, 0))
    for _ in range(3):
        step.get("val", "gradients")
        step.get("val", "weights")
    assert step.reads == {("val", "gradients"): 1, ("val", "weights"): 1}


def test_missing_split_is_not_stored_and_missing_file_is_named(tmp_path):
    ld.write(tmp_path, 5, "val", sample())
    d = ld.learning_dynamics_dir(tmp_path, 5)
    step = ld.StepDynamics(d, step=5)
    with pytest.raises(ld.NotStoredError, match="train learning dynamics not stored at step 5"):
        step.get("train", "gradients")
    (d / "val_weights.pt").unlink()
    with pytest.raises(ld.LearningDynamicsError, match="val_weights.pt"):
        step.get("val", "weights")
    assert ("val", "gradients") in step.available() and ("train", "gradients") not in step.available()


def test_truncated_file_is_refused_with_its_name(tmp_path):
    ld.write(tmp_path, 0, "val", sample())
    p = ld.file_path(ld.learning_dynamics_dir(tmp_path, 0), "val", "activations")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ld.LearningDynamicsError, match="val_activations.pt.*truncated"):
        ld.load_file(p)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_non_tensor_content_is_refused(tmp_path):
    p = tmp_path / "val_weights.pt"
    torch.save({"layers.0.attention.v_proj": Evil()}, p, pickle_protocol=2)
    with pytest.raises(ld.LearningDynamicsError, match="refused"):
        ld.load_file(p)
    torch.save({"layers.0.attention.v_proj": [1, 2]}, p)
    with pytest.raises(ld.LearningDynamicsError, match=r"dict\[str, Tensor\]"):
        ld.load_file(p)
    torch.save([torch.zeros(1)], p)
    with pytest.raises(ld.LearningDynamicsError, match="found list"):
        ld.load_file(p)


def test_writer_validates_input(tmp_path):
    with pytest.raises(ValueError, match="unknown learning-dynamics kinds"):
        ld.write(tmp_path, 0, "val", {"grads": {}})
    with pytest.raises(ValueError, match="split"):
        ld.write(tmp_path, 0, "test", {})
    with pytest.raises(TypeError, match="not a tensor"):
        ld.write(tmp_path, 0, "val", {"weights": {"layers.0.a": 1.0}})


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    ld.write(tmp_path, 0, "val", sample(seed=1))
    d = ld.learning_dynamics_dir(tmp_path, 0)
    before = (d / "val_weights.pt").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ld.write(tmp_path, 0, "val", sample(seed=2))
    assert (d / "val_weights.pt").read_bytes() == before
    assert not list(d.glob(".*tmp"))


@pytest.mark.parametrize("n,bs,ws,want", [
    (1024, 256, 16, 4),     # pico tiny, train: 1024 / 256
    (1024, 128, 16, 8),     # small/medium/large, train
    (1435, 256, 16, 6),     # tiny val: ceil(ceil(1435/16)=90 / 16)
    (1435, 128, 16, 12),    # others val: ceil(90 / 8)
    (10, 4, 1, 3),
])
def test_gradient_iterations(n, bs, ws, want):
    assert ld.gradient_iterations(n, bs, ws) == want


def test_gradients_normalised_to_mean_loss_gradient(tmp_path):
    """Writing a pico-style summed gradient (sum over sub-batches of mean-loss gradients) and
    reading with the sub-batch size recovers the full-batch mean-loss gradient (equal sub-batches)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2, bias=False)
    x, y = torch.randn(12, 3), torch.randn(12, 2)
    for i in range(0, 12, 4):  # 3 sub-batches of 4, gradients accumulate
        ((lin(x[i:i + 4]) - y[i:i + 4]) ** 2).mean().backward()
    summed = lin.weight.grad.clone()
    lin.weight.grad = None
    ((lin(x) - y) ** 2).mean().backward()
    ld.write(tmp_path, 0, "train", {"activations": {"layers.0.m": lin(x).detach()}, "gradients": {"layers.0.m": summed}})
    d = ld.learning_dynamics_dir(tmp_path, 0)
    got = ld.StepDynamics(d, batch_size={"train": 4}).get("train", "gradients")[(0, "m")]
    assert torch.allclose(got, lin.weight.grad, atol=1e-6)
    raw = ld.StepDynamics(d, normalise_gradients=False).get("train", "gradients")[(0, "m")]
    assert torch.equal(raw, summed)
