"""Pythia plugin internals: the public schedule, the streamed safetensors reader, module selection.

Independent truths: transformers' own GPT-NeoX parameter count (meta device), the `safetensors`
library's reader, plain tensor subtraction, and the attention output when exactly the value
rows of ``query_key_value`` are zeroed.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.lm import tiny_gpt_neox
from harness_plugins.models.pythia import modules as M
from harness_plugins.models.pythia import schedule as S
from harness import weights as T

torch.set_num_threads(1)


# ---- schedule -------------------------------------------------------------------------
def test_steps_and_tokens():
    steps = S.steps()
    assert len(steps) == 154 and steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[12:14] == [2000, 3000] and steps[-1] == 143000
    assert S.tokens_seen(143000) == 299_892_736_000  # the note's total (1024 x 2048 x 143000)


@pytest.mark.parametrize("size", ["14m", "70m", "160m", "1b"])
def test_n_params_matches_transformers(size):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    s = S.SIZES[size]
    cfg = GPTNeoXConfig(vocab_size=S.VOCAB_SIZE, hidden_size=s.d_model, num_hidden_layers=s.n_layers,
                        num_attention_heads=s.n_heads, intermediate_size=4 * s.d_model, rotary_pct=0.25,
                        use_parallel_residual=True, tie_word_embeddings=False)
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(cfg)
    assert S.n_params(size) == sum(p.numel() for p in model.parameters())
    assert S.n_params("160m") == 162_322_944  # the published count (pythia-160m: "162M")


def test_learning_rate_schedule():
    peak = S.SIZES["160m"].lr
    warmup = 1430  # 1% of 143000
    assert S.learning_rate("160m", 0) == 0.0
    assert S.learning_rate("160m", warmup // 2) == pytest.approx(peak / 2, rel=1e-3)
    assert S.learning_rate("160m", warmup) == pytest.approx(peak)
    mid = warmup + (143000 - warmup) / 2  # cosine half way: (peak + min) / 2
    assert S.lr_at(mid, peak, 143000, warmup) == pytest.approx(0.55 * peak)
    assert S.learning_rate("160m", 143000) == pytest.approx(0.1 * peak)
    lrs = [S.learning_rate("160m", s) for s in S.steps() if s >= warmup]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# ---- streamed reader ------------------------------------------------------------------
@pytest.fixture
def two_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(37, 11, generator=g), "b": torch.randn(5, generator=g),
         "h": torch.randn(6, 4, generator=g).half(), "i": torch.arange(7, dtype=torch.int64)}
    b = {k: (v + torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v + 1)
         for k, v in a.items()}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(a, str(pa))
    save_file(b, str(pb))
    return pa, pb


def test_reader_matches_safetensors(two_files):
    pa, _ = two_files
    ref = load_file(str(pa))
    w = T.WeightFiles.open([pa])
    assert set(w.names()) == set(ref) and w.n_params() == sum(t.numel() for t in ref.values())
    for name, t in ref.items():
        got = w.read(name)
        assert got.dtype == t.dtype and torch.equal(got, t)


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("chunk", [7, T.CHUNK_ELEMS])
def test_stream_deltas_exact(two_files, monkeypatch, chunk, mapped):
    monkeypatch.setattr(T, "CHUNK_ELEMS", chunk)  # 7 forces many partial chunks (and unaligned windows)
    if not mapped:  # the readinto fallback for files that cannot be memory-mapped
        def no_mmap(self, e, out):
            raise OSError("no mmap here")

        monkeypatch.setattr(T.WeightFiles, "_subtract_mapped", no_mmap)
    pa, pb = two_files
    a, b = load_file(str(pa)), load_file(str(pb))
    got = dict(T.stream_deltas(T.WeightFiles.open([pb]), T.WeightFiles.open([pa])))
    assert set(got) == set(a)
    for name in a:
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], b[name].float() - a[name].float())


def test_truncated_and_corrupt_files(two_files, tmp_path):
    pa, _ = two_files
    data = pa.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    with pytest.raises(T.CheckpointFileError, match=r"cut\.safetensors: truncated"):
        T.WeightFiles.open([cut])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:8] + b"}" * 16 + data[24:])
    with pytest.raises(T.CheckpointFileError, match=r"bad\.safetensors: corrupt"):
        T.WeightFiles.open([bad])
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x00\x01")
    with pytest.raises(T.CheckpointFileError, match="tiny.safetensors: truncated"):
        T.WeightFiles.open([tiny])
    with pytest.raises(T.CheckpointFileError, match="missing"):
        T.WeightFiles.open([tmp_path / "nope.safetensors"])
    # truncated after the header was read (file shrinks between open and read)
    ok = tmp_path / "ok.safetensors"
    ok.write_bytes(data)
    w = T.WeightFiles.open([ok])
    ok.write_bytes(data[: len(data) // 2])
    with pytest.raises(T.CheckpointFileError, match="truncated while reading"):
        for name in w.names():
            w.read(name)


def test_shape_change_and_missing_tensor(tmp_path):
    save_file({"w": torch.zeros(3, 4), "x": torch.zeros(2)}, str(tmp_path / "old.safetensors"))
    save_file({"w": torch.zeros(3, 5), "y": torch.zeros(2)}, str(tmp_path / "new.safetensors"))
    old, new = T.WeightFiles.open([tmp_path / "old.safetensors"]), T.WeightFiles.open([tmp_path / "new.safetensors"])
    with pytest.raises(T.CheckpointFileError, match=r"shape of 'w' changed.*\(3, 4\).*old.*\(3, 5\).*new"):
        list(T.stream_deltas(new, old, ["w"]))
    with pytest.raises(T.CheckpointFileError, match=r"'y' is in .*new.safetensors but not in .*old"):
        list(T.stream_deltas(new, old, ["y"]))


def test_sha256_is_content_hash(two_files):
    import hashlib

    pa, _ = two_files
    assert T.WeightFiles.open([pa]).sha256() == hashlib.sha256(pa.read_bytes()).hexdigest()


# ---- module selection -----------------------------------------------------------------
def test_value_slice_is_the_value_projection():
    """Zeroing exactly the value rows (and bias) makes attention output = dense bias,
    whatever the input; zeroing the query rows instead does not."""
    model = tiny_gpt_neox(hidden=32, heads=4, layers=1)
    attn = model.gpt_neox.layers[0].attention
    h = torch.randn(2, 5, 32)
    pos = torch.arange(5).expand(2, 5)
    emb = model.gpt_neox.rotary_emb(h, pos)

    def attention_out(which: int) -> torch.Tensor:
        w, b = attn.query_key_value.weight, attn.query_key_value.bias
        saved = w.detach().clone(), b.detach().clone()
        view = torch.zeros_like(w).view(4, 3, 8, 32)
        view[:, which] = 1
        mask = view.reshape(96, 32)[:, 0].bool()
        with torch.no_grad():
            w[mask] = 0
            b[mask] = 0
            out = attn(h, attention_mask=None, position_embeddings=emb)[0]
            w.copy_(saved[0])
            b.copy_(saved[1])
        return out

    assert torch.allclose(attention_out(2), attn.dense.bias.expand(2, 5, 32), atol=1e-6)
    assert not torch.allclose(attention_out(0), attn.dense.bias.expand(2, 5, 32), atol=1e-3)
    # and the slicer picks exactly those rows
    w = attn.query_key_value.weight.detach()
    idx = torch.arange(96).view(4, 3, 8)[:, 2].reshape(-1)
    assert torch.equal(M.value_rows(4)(w), w[idx])


def test_plan_kinds_and_globs():
    model = tiny_gpt_neox(layers=2)
    shapes = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    pico = [p.name for p in M.plan(shapes, None, 4)]
    assert sorted(pico) == sorted(f"gpt_neox.layers.{i}.{s}" for i in range(2) for s in (
        "attention.value.weight", "attention.dense.weight", "mlp.dense_4h_to_h.weight"))
    mats = [p.name for p in M.plan(shapes, "matrices", 4)]
    assert mats == [n for n, s in shapes.items() if len(s) == 2]
    assert [p.name for p in M.plan(shapes, "all", 4)] == list(shapes)
    assert [p.name for p in M.plan(shapes, ["*.layers.1.attention.value.*"], 4)] == ["gpt_neox.layers.1.attention.value.weight"]
    assert M.plan(shapes, ["nothing*"], 4) == []
    assert math.prod(shapes["gpt_neox.layers.0.attention.query_key_value.weight"]) == 3 * 32 * 32
