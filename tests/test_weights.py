"""The core's weight reader and the one shared ``delta`` field (`harness.weights`, `harness.delta`).

Independent truth: the plain difference of the tensors as saved by safetensors' own writer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from harness.api import Checkpoint, CheckpointRef, FieldUnavailable
from harness.delta import delta_field, delta_meta, offers_delta
from harness.weights import CheckpointFileError, TensorWeights, WeightFiles


def _ckpt(step, previous=None):
    ck = Checkpoint(CheckpointRef("fam", "m", "s", step))
    ck.previous = previous
    return ck


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(33, 7, generator=g), "b": torch.randn(5, generator=g).half(), "e": torch.randn(64, 9, generator=g)}
    b = {k: v + torch.randn(v.shape, generator=g).to(v.dtype) for k, v in a.items()}
    save_file(a, str(d / "a.safetensors"))
    save_file(b, str(d / "b.safetensors"))
    return d, a, b


def test_delta_field_equals_difference_for_file_and_memory_readers(pair):
    d, a, b = pair
    prev_ref = CheckpointRef("fam", "m", "s", 10)
    ck = _ckpt(30, prev_ref)
    assert offers_delta(ck) and delta_meta(ck) == {"from_step": 10, "to_step": 30, "step_gap": 20}
    readers = {
        "files": (lambda: WeightFiles.open([d / "b.safetensors"]), lambda r: WeightFiles.open([d / "a.safetensors"])),
        "memory": (TensorWeights(b), lambda r: TensorWeights(a)),
    }
    for cur, prev in readers.values():
        got = dict(delta_field(ck, cur, prev))
        assert set(got) == set(a)
        for n in a:
            assert got[n].dtype == torch.float32
            assert torch.equal(got[n], b[n].float() - a[n].float()), n
    sel = dict(delta_field(ck, TensorWeights(b), lambda r: TensorWeights(a), select=lambda ns: [n for n in ns if n != "e"]))
    assert set(sel) == {"w", "b"}


def test_first_checkpoint_has_no_delta_for_any_reader(pair):
    d, a, b = pair
    ck = _ckpt(0)
    assert not offers_delta(ck) and delta_meta(ck) == {}
    with pytest.raises(FieldUnavailable, match="m@step0 is the first selected checkpoint of its run: no delta"):
        delta_field(ck, TensorWeights(b), lambda r: TensorWeights(a))  # raised at the call, not lazily
    assert issubclass(FieldUnavailable, NotImplementedError)  # the runner's skipped path


def test_mismatch_names_both_sides(pair):
    d, a, b = pair
    ck = _ckpt(1, CheckpointRef("fam", "m", "s", 0))
    with pytest.raises(CheckpointFileError, match="shape of 'w' changed"):
        list(delta_field(ck, TensorWeights({"w": torch.zeros(2, 2)}), lambda r: TensorWeights({"w": torch.zeros(3)})))
    with pytest.raises(CheckpointFileError, match="not in"):
        list(delta_field(ck, lambda: WeightFiles.open([d / "b.safetensors"]), lambda r: TensorWeights({"w": a["w"]})))
