"""pico-decoder: logits against an independent reference of pico-train's maths, and against
transformers' LlamaForCausalLM given converted weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness_plugins.models.pico.convert import (
    interleaved_to_half_perm,
    llama_to_pico,
    pico_state_to_llama,
    pico_to_llama,
)
from harness_plugins.models.pico.modeling import PicoDecoderConfig, PicoDecoderForCausalLM, pico_config

torch.set_num_threads(1)


def small_config(**kw) -> PicoDecoderConfig:
    base = dict(d_model=48, n_layers=2, vocab_size=97, attention_n_heads=6, attention_n_kv_heads=2,
                activation_hidden_dim=96, max_seq_len=64)
    return PicoDecoderConfig(**{**base, **kw})


def randomised(cfg: PicoDecoderConfig, seed: int = 0) -> PicoDecoderForCausalLM:
    torch.manual_seed(seed)
    model = PicoDecoderForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 so the test sees their weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


# ---- an independent, deliberately naive implementation of pico-train's equations -------------

def reference_logits(state: dict[str, torch.Tensor], cfg: PicoDecoderConfig, ids: torch.Tensor) -> torch.Tensor:
    """Loops over batch and heads; RoPE as complex multiplication of (x[2i] + i x[2i+1])."""
    W = {k.removeprefix("pico_decoder."): v.double() for k, v in state.items()}
    H, KV, d = cfg.attention_n_heads, cfg.attention_n_kv_heads, cfg.d_model
    hd = d // H

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rope(x):  # x: (S, hd), positions 0..S-1; pair (x[2i], x[2i+1]) as one complex number
        t = torch.arange(x.shape[0], dtype=torch.float64)[:, None]
        i = torch.arange(hd // 2, dtype=torch.float64)[None, :]
        angle = t * cfg.position_emb_theta ** (-2.0 * i / hd)
        z = torch.complex(x[:, 0::2], x[:, 1::2]) * torch.polar(torch.ones_like(angle), angle)
        return torch.stack((z.real, z.imag), -1).flatten(-2)

    outs = []
    for b in range(ids.shape[0]):
        x = W["embedding_proj.weight"][ids[b]]
        S = x.shape[0]
        for li in range(cfg.n_layers):
            p = f"layers.{li}."
            a = rms(x, W[p + "attention_norm.weight"])
            q, k, v = a @ W[p + "attention.q_proj.weight"].T, a @ W[p + "attention.k_proj.weight"].T, \
                a @ W[p + "attention.v_proj.weight"].T
            heads = []
            for h in range(H):
                g = h // (H // KV)  # kv head shared by consecutive query heads
                qh, kh, vh = rope(q[:, h * hd:(h + 1) * hd]), rope(k[:, g * hd:(g + 1) * hd]), v[:, g * hd:(g + 1) * hd]
                scores = qh @ kh.T / math.sqrt(hd)
                scores = scores + torch.triu(torch.full((S, S), float("-inf"), dtype=scores.dtype), 1)
                heads.append(torch.softmax(scores, -1) @ vh)
            x = x + torch.cat(heads, -1) @ W[p + "attention.o_proj.weight"].T
            m = rms(x, W[p + "swiglu_norm.weight"])
            gate = m @ W[p + "swiglu.w_0.weight"].T
            x = x + ((gate * torch.sigmoid(gate)) * (m @ W[p + "swiglu.w_1.weight"].T)) @ W[p + "swiglu.w_2.weight"].T
        outs.append(rms(x, W["output_norm.weight"]) @ W["de_embedding_proj.weight"].T)
    return torch.stack(outs)


@pytest.mark.parametrize("kv_heads", [2, 6, 1])
def test_logits_match_reference_maths(kv_heads):
    cfg = small_config(attention_n_kv_heads=kv_heads)
    model = randomised(cfg, seed=kv_heads)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    got = model(ids).logits
    assert got.dtype == torch.float32 and got.shape == (2, 12, cfg.vocab_size)
    want = reference_logits(model.state_dict(), cfg, ids).float()
    assert (got - want).abs().max().item() <= 1e-5


def test_llama_with_converted_weights_gives_same_logits():
    cfg = small_config()
    model = randomised(cfg, seed=3)
    llama = pico_to_llama(model)
    assert type(llama).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, cfg.vocab_size, (3, 20), generator=torch.Generator().manual_seed(2))
    assert (llama(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
    back = llama_to_pico(llama)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_conversion_without_the_permutation_would_be_wrong():
    """The RoPE permutation matters: skipping it changes the logits (the test can fail)."""
    cfg = small_config()
    model = randomised(cfg, seed=4)
    llama = pico_to_llama(model)
    hd = cfg.d_model // cfg.attention_n_heads
    unpermuted = pico_state_to_llama(model.state_dict(), hd)
    inv = torch.argsort(interleaved_to_half_perm(hd))
    for k in list(unpermuted):
        if "q_proj" in k or "k_proj" in k:
            w = unpermuted[k]
            unpermuted[k] = w.view(-1, hd, w.shape[1])[:, inv].reshape(w.shape)
    llama.load_state_dict(unpermuted)
    ids = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    assert (llama(ids).logits - model(ids).logits).abs().max().item() > 1e-3


def test_padding_and_batching_match_single_sequences():
    cfg = small_config()
    model = randomised(cfg, seed=5)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, cfg.vocab_size, (1, 9), generator=g), torch.randint(0, cfg.vocab_size, (1, 5), generator=g)
    la, lb = model(a).logits[0], model(b).logits[0]
    # right padding
    ids = torch.zeros(2, 9, dtype=torch.long)
    ids[0], ids[1, :5] = a[0], b[0]
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[0], mask[1, :5] = 1, 1
    out = model(ids, attention_mask=mask).logits
    assert (out[0] - la).abs().max() <= 1e-5 and (out[1, :5] - lb).abs().max() <= 1e-5
    # left padding: positions restart at the first real token
    ids_l = torch.zeros(2, 9, dtype=torch.long)
    ids_l[0], ids_l[1, 4:] = a[0], b[0]
    mask_l = torch.zeros(2, 9, dtype=torch.long)
    mask_l[0], mask_l[1, 4:] = 1, 1
    out_l = model(ids_l, attention_mask=mask_l).logits
    assert torch.isfinite(out_l).all()
    assert (out_l[1, 4:] - lb).abs().max() <= 1e-5
    # single token works (pico-train's wrapper crashes here)
    assert model(a[:, :1]).logits.shape == (1, 1, cfg.vocab_size)


def test_labels_give_mean_next_token_loss():
    cfg = small_config()
    model = randomised(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    logp = torch.log_softmax(out.logits[:, :-1], -1)
    want = -logp.gather(-1, ids[:, 1:, None]).mean()
    assert abs(out.loss.item() - want.item()) < 1e-5


def test_loads_pico_train_checkpoint_folder_without_remote_code(tmp_path):
    """A folder as pico-train writes it: its config.json (auto_map to remote code) and
    safetensors keyed ``pico_decoder.*``; neither our class nor AutoModel needs the remote code."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    cfg = small_config()
    model = randomised(cfg, seed=6)
    conf = {"activation_hidden_dim": 96, "architectures": ["PicoDecoderHF"], "attention_n_heads": 6,
            "attention_n_kv_heads": 2, "auto_map": {"AutoConfig": "pico_decoder.PicoDecoderHFConfig",
            "AutoModelForCausalLM": "pico_decoder.PicoDecoderHF"}, "batch_size": 1024, "d_model": 48,
            "max_seq_len": 64, "model_type": "pico_decoder", "n_layers": 2, "norm_eps": 1e-06,
            "position_emb_theta": 10000.0, "torch_dtype": "float32", "vocab_size": 97}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "pico_decoder.py").write_text("raise RuntimeError('remote code must never run')\n")
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    ours = PicoDecoderForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(ours(ids).logits, model(ids).logits)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert isinstance(auto, PicoDecoderForCausalLM)
    assert torch.equal(auto(ids).logits, model(ids).logits)


def test_published_sizes_parameter_counts():
    """Note section 1.2: 2*V*d + 12*(2d^2 + 2d*(d/3) + 3*d*4d + 2d) + d, with V = 50304."""
    for size, d in [("tiny", 96), ("small", 384)]:
        cfg = pico_config(size)
        with torch.device("meta"):
            model = PicoDecoderForCausalLM(cfg)
        n = sum(p.numel() for p in model.parameters())
        assert n == 2 * 50304 * d + 12 * (2 * d * d + 2 * d * (d // 3) + 12 * d * d + 2 * d) + d
    assert sum(p.numel() for p in PicoDecoderForCausalLM(pico_config("tiny")).parameters()) == 11_282_784


def test_two_sizes_in_one_process():
    m1, m2 = randomised(small_config(d_model=24, attention_n_heads=6)), randomised(small_config(d_model=48))
    ids = torch.randint(0, 97, (1, 6))
    assert m1(ids).logits.shape == m2(ids).logits.shape


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="attention_n_kv_heads"):
        small_config(attention_n_kv_heads=4)
    with pytest.raises(ValueError, match="unknown pico size"):
        pico_config("huge")
    model = randomised(small_config(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
