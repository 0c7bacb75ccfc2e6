"""Pico <-> Llama weight conversion: run Pico checkpoints through any Llama-aware tool.

    llama = pico_to_llama(pico_model)            # transformers.LlamaForCausalLM, same logits
    pico = llama_to_pico(llama)                  # and back (exact inverse)

pico-decoder is LLaMA's architecture with three naming/layout differences:
module names (``swiglu.w_0`` = ``mlp.gate_proj`` ...), untied head, and RoPE pairing. Pico
rotates interleaved pairs ``(2i, 2i+1)``; transformers' Llama rotates ``(i, i + hd/2)``
("rotate half"), both with frequency ``theta^(-2i/hd)``. Permuting the rows of every query and
key head from ``[0, 1, 2, ..., hd-1]`` to ``[0, 2, 4, ..., 1, 3, 5, ...]`` maps one onto the
other; q.k is unchanged because the same permutation is applied to both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

PREFIX = "pico_decoder."

#: pico suffix -> llama suffix, per layer
_LAYER_MAP = {
    "attention.q_proj.weight": "self_attn.q_proj.weight",
    "attention.k_proj.weight": "self_attn.k_proj.weight",
    "attention.v_proj.weight": "self_attn.v_proj.weight",
    "attention.o_proj.weight": "self_attn.o_proj.weight",
    "swiglu.w_0.weight": "mlp.gate_proj.weight",
    "swiglu.w_1.weight": "mlp.up_proj.weight",
    "swiglu.w_2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "swiglu_norm.weight": "post_attention_layernorm.weight",
}
_GLOBAL_MAP = {
    "embedding_proj.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "de_embedding_proj.weight": "lm_head.weight",
}


def interleaved_to_half_perm(head_dim: int) -> torch.Tensor:
    """Row order that turns an interleaved-pair RoPE head into a rotate-half head."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _permute_heads(w: torch.Tensor, head_dim: int, perm: torch.Tensor) -> torch.Tensor:
    n_heads = w.shape[0] // head_dim
    return w.view(n_heads, head_dim, -1)[:, perm].reshape(w.shape)


def pico_state_to_llama(state: Mapping[str, torch.Tensor], head_dim: int) -> dict[str, torch.Tensor]:
    """Rename and permute a Pico state dict (with or without the ``pico_decoder.`` prefix)."""
    perm = interleaved_to_half_perm(head_dim)
    out: dict[str, torch.Tensor] = {}
    for key, w in state.items():
        k = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if k in _GLOBAL_MAP:
            out[_GLOBAL_MAP[k]] = w
            continue
        parts = k.split(".", 2)
        if len(parts) != 3 or parts[0] != "layers" or parts[2] not in _LAYER_MAP:
            raise KeyError(f"not a pico-decoder weight: {key!r}")
        if parts[2] in ("attention.q_proj.weight", "attention.k_proj.weight"):
            w = _permute_heads(w, head_dim, perm)
        out[f"model.layers.{parts[1]}.{_LAYER_MAP[parts[2]]}"] = w
    return out


def llama_state_to_pico(state: Mapping[str, torch.Tensor], head_dim: int) -> dict[str, torch.Tensor]:
    """Inverse of `pico_state_to_llama` (keys get the ``pico_decoder.`` prefix)."""
    inv = torch.argsort(interleaved_to_half_perm(head_dim))
    glob = {v: k for k, v in _GLOBAL_MAP.items()}
    layer = {v: k for k, v in _LAYER_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    for key, w in state.items():
        if key in glob:
            out[PREFIX + glob[key]] = w
            continue
        parts = key.split(".", 3)
        if len(parts) != 4 or parts[:2] != ["model", "layers"] or parts[3] not in layer:
            raise KeyError(f"not a Llama weight this conversion knows: {key!r}")
        if parts[3] in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            w = _permute_heads(w, head_dim, inv)
        out[f"{PREFIX}layers.{parts[2]}.{layer[parts[3]]}"] = w
    return out


def llama_config_for(config) -> "transformers.LlamaConfig":  # noqa: F821
    """The `LlamaConfig` with the same sizes as a `PicoDecoderConfig`."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.activation_hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.attention_n_heads,
        num_key_value_heads=config.attention_n_kv_heads,
        head_dim=config.d_model // config.attention_n_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.position_emb_theta},
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        tie_word_embeddings=False,
    )


def pico_config_for(config) -> "PicoDecoderConfig":  # noqa: F821
    """The `PicoDecoderConfig` with the same sizes as a `LlamaConfig` (untied, no biases)."""
    from harness_plugins.models.pico.modeling import PicoDecoderConfig

    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("pico-decoder has no biases; this Llama config uses them")
    if getattr(config, "tie_word_embeddings", False):
        raise ValueError("pico-decoder's head is untied; this Llama config ties it")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"pico-decoder uses plain RoPE, not {rope.get('rope_type')!r}")
    return PicoDecoderConfig(
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        vocab_size=config.vocab_size,
        attention_n_heads=config.num_attention_heads,
        attention_n_kv_heads=config.num_key_value_heads,
        activation_hidden_dim=config.intermediate_size,
        norm_eps=config.rms_norm_eps,
        position_emb_theta=rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)),
        max_seq_len=config.max_position_embeddings,
    )


def pico_to_llama(model) -> "transformers.LlamaForCausalLM":  # noqa: F821
    """A `LlamaForCausalLM` computing the same logits as ``model`` (a PicoDecoderForCausalLM)."""
    from transformers import LlamaForCausalLM

    cfg = model.config
    llama = LlamaForCausalLM(llama_config_for(cfg))
    state = pico_state_to_llama(model.state_dict(), cfg.d_model // cfg.attention_n_heads)
    llama.load_state_dict(state, strict=True)
    return llama.to(next(model.parameters()).dtype).eval()


def llama_to_pico(model) -> "PicoDecoderForCausalLM":  # noqa: F821
    """A `PicoDecoderForCausalLM` computing the same logits as ``model`` (a LlamaForCausalLM)."""
    from harness_plugins.models.pico.modeling import PicoDecoderForCausalLM

    cfg = pico_config_for(model.config)
    pico = PicoDecoderForCausalLM(cfg)
    state = {k: v for k, v in model.state_dict().items() if "rotary_emb" not in k}
    pico.load_state_dict(llama_state_to_pico(state, cfg.d_model // cfg.attention_n_heads), strict=True)
    return pico.to(next(model.parameters()).dtype).eval()
