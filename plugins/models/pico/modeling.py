"""Native pico-decoder: Pico-LM's LLaMA-style causal LM as a ``transformers.PreTrainedModel``.

Loads Pico's ``model.safetensors`` (keys ``pico_decoder.*``) with no ``trust_remote_code``::

    model = PicoDecoderForCausalLM.from_pretrained("runs/demo/checkpoints/step_1000")
    logits = model(input_ids, attention_mask=mask).logits      # (B, S, V), float32

Same maths and module names as pico-train's ``src/model/pico_decoder.py`` (so the stored
learning-dynamics keys ``layers.{i}.attention.v_proj`` map onto ``model.pico_decoder``):
RMSNorm computed in fp32, RoPE on *interleaved* pairs ``(x[2i], x[2i+1])``, grouped-query
attention (query head h reads kv head ``h // n_rep``), SwiGLU ``w_2(silu(w_0 x) * w_1 x)``,
untied embedding / de-embedding, no biases. Differences from pico-train's wrapper, all
additive: ``attention_mask`` (padding) and ``position_ids`` are honoured, ``labels`` give a
loss, single-token inputs work, and the RoPE table is cached per instance (pico-train keeps it
on the class, which breaks building two sizes in one process).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

logger = logging.getLogger(__name__)

#: the Pico suite's published sizes (research note section 1.2): only width changes
PICO_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 96, "activation_hidden_dim": 384},
    "small": {"d_model": 384, "activation_hidden_dim": 1536},
    "medium": {"d_model": 768, "activation_hidden_dim": 3072},
    "large": {"d_model": 1536, "activation_hidden_dim": 6144},
}


class PicoDecoderConfig(PretrainedConfig):
    """pico-train's ``ModelConfig`` fields, which are also the keys of Pico's ``config.json``."""

    model_type = "pico_decoder"

    def __init__(
        self,
        d_model: int = 768,
        n_layers: int = 12,
        vocab_size: int = 50304,
        batch_size: int = 1024,
        max_seq_len: int = 2048,
        attention_n_heads: int = 12,
        attention_n_kv_heads: int | None = 4,
        activation_hidden_dim: int = 3072,
        norm_eps: float = 1e-6,
        position_emb_theta: float = 10000.0,
        **kwargs: Any,
    ):
        # Pico's config.json carries auto_map/architectures for its remote code: harmless here
        kwargs.setdefault("tie_word_embeddings", False)
        self.d_model = int(d_model)
        self.n_layers = int(n_layers)
        self.batch_size = int(batch_size)
        self.max_seq_len = int(max_seq_len)
        self.attention_n_heads = int(attention_n_heads)
        self.attention_n_kv_heads = int(attention_n_kv_heads or attention_n_heads)
        self.activation_hidden_dim = int(activation_hidden_dim)
        self.norm_eps = float(norm_eps)
        self.position_emb_theta = float(position_emb_theta)
        super().__init__(vocab_size=int(vocab_size), **kwargs)
        self.vocab_size = int(vocab_size)
        if self.d_model % self.attention_n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of attention_n_heads={self.attention_n_heads}")
        if self.attention_n_heads % self.attention_n_kv_heads:
            raise ValueError(
                f"attention_n_heads={self.attention_n_heads} is not a multiple of "
                f"attention_n_kv_heads={self.attention_n_kv_heads}"
            )
        if (self.d_model // self.attention_n_heads) % 2:
            raise ValueError("head dimension d_model // attention_n_heads must be even for RoPE")

    # transformers' generic names, so HFLM and other tools find the sizes
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_attention_heads(self) -> int:
        return self.attention_n_heads

    @property
    def max_position_embeddings(self) -> int:
        return self.max_seq_len

    @property
    def head_dim(self) -> int:
        return self.d_model // self.attention_n_heads


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight``, normalised in fp32 (as pico-train)."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class RoPE(nn.Module):
    """Rotary embedding on interleaved pairs; the cos/sin table lives on the instance.

    The table is an ordinary attribute (not a buffer): it is recomputed, never stored, and
    transformers' meta-device loading cannot leave it uninitialised.
    """

    def __init__(self, head_dim: int, theta: float, max_seq_len: int):
        super().__init__()
        self.head_dim, self.theta, self.max_seq_len = head_dim, theta, max_seq_len
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None

    def table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._table is None or self._table[0].device != device:
            inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim))
            ang = torch.outer(torch.arange(self.max_seq_len, device=device).float(), inv)
            self._table = (ang.cos(), ang.sin())
        return self._table

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (B, S, H, hd) at integer positions (B, S) or (S,); computed in fp32."""
        if int(position_ids.max()) >= self.max_seq_len:
            raise ValueError(f"position {int(position_ids.max())} exceeds max_seq_len={self.max_seq_len}")
        cos, sin = self.table(x.device)
        cos, sin = cos[position_ids].unsqueeze(-2), sin[position_ids].unsqueeze(-2)  # (B|1, S, 1, hd/2)
        xf = x.float().unflatten(-1, (-1, 2))
        x0, x1 = xf[..., 0], xf[..., 1]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        return out.type_as(x)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE (module names as in pico-train)."""

    def __init__(self, config: PicoDecoderConfig):
        super().__init__()
        d, self.n_heads, self.n_kv_heads = config.d_model, config.attention_n_heads, config.attention_n_kv_heads
        self.head_dim = d // self.n_heads
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.rope = RoPE(self.head_dim, config.position_emb_theta, config.max_seq_len)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.rope(self.q_proj(x).view(b, s, self.n_heads, self.head_dim), position_ids)
        k = self.rope(self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim), position_ids)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = self.n_heads != self.n_kv_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, config: PicoDecoderConfig):
        super().__init__()
        self.w_0 = nn.Linear(config.d_model, config.activation_hidden_dim, bias=False)
        self.w_1 = nn.Linear(config.d_model, config.activation_hidden_dim, bias=False)
        self.w_2 = nn.Linear(config.activation_hidden_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_0(x)) * self.w_1(x))


class PicoDecoderBlock(nn.Module):
    def __init__(self, config: PicoDecoderConfig):
        super().__init__()
        self.attention = Attention(config)
        self.swiglu = SwiGLU(config)
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.swiglu_norm = RMSNorm(config.d_model, config.norm_eps)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), position_ids, mask)
        return h + self.swiglu(self.swiglu_norm(h))


class PicoDecoder(nn.Module):
    """The bare decoder (pico-train's ``PicoDecoder``): token ids -> float32 logits."""

    def __init__(self, config: PicoDecoderConfig):
        super().__init__()
        self.embedding_proj = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList([PicoDecoderBlock(config) for _ in range(config.n_layers)])
        self.output_norm = RMSNorm(config.d_model, config.norm_eps)
        self.de_embedding_proj = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, s = input_ids.shape
        h = self.embedding_proj(input_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            pad = attention_mask.to(torch.bool)
            if position_ids is None:  # left padding: real tokens start at position 0
                position_ids = (pad.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(s, s, dtype=torch.bool, device=h.device).tril()
            # a query may read earlier real keys; its own position always stays visible so a
            # padded query row is never fully masked (that would give NaN, not just junk)
            mask = (causal & pad[:, None, :]) | torch.eye(s, dtype=torch.bool, device=h.device)
            mask = mask[:, None]  # (B, 1, S, S)
        if position_ids is None:
            position_ids = torch.arange(s, device=h.device)
        for layer in self.layers:
            h = layer(h, position_ids, mask)
        return self.de_embedding_proj(self.output_norm(h)).float()


class PicoDecoderForCausalLM(PreTrainedModel):
    """HF wrapper; its state dict is Pico's (``pico_decoder.`` prefix), so checkpoints load as is."""

    config_class = PicoDecoderConfig
    base_model_prefix = "pico_decoder"
    main_input_name = "input_ids"
    _no_split_modules = ["PicoDecoderBlock"]
    _supports_sdpa = True

    def __init__(self, config: PicoDecoderConfig):
        super().__init__(config)
        self.pico_decoder = PicoDecoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # pico-train uses PyTorch's default initialisation (module constructors) and nothing else
        if isinstance(module, RMSNorm):
            with torch.no_grad():
                module.weight.fill_(1.0)
        elif isinstance(module, nn.Linear | nn.Embedding):
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.pico_decoder.embedding_proj

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.pico_decoder.embedding_proj = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.pico_decoder.de_embedding_proj

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits (float32) and, with ``labels`` (-100 = ignore), the mean next-token loss."""
        logits = self.pico_decoder(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)


def pico_config(size: str, **overrides: Any) -> PicoDecoderConfig:
    """The config of a published Pico size (tiny|small|medium|large), with optional overrides."""
    if size not in PICO_SIZES:
        raise ValueError(f"unknown pico size {size!r}; allowed: {', '.join(PICO_SIZES)}")
    return PicoDecoderConfig(**{**PICO_SIZES[size], **overrides})


def _register_auto() -> None:
    """Let AutoConfig/AutoModelForCausalLM resolve ``model_type: pico_decoder`` to this code."""
    try:
        AutoConfig.register("pico_decoder", PicoDecoderConfig)
        AutoModelForCausalLM.register(PicoDecoderConfig, PicoDecoderForCausalLM)
    except ValueError:  # already registered (module reloaded)
        pass


_register_auto()
