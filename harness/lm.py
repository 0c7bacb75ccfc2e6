"""Generic causal-LM checkpoint: per-token loss, logits and weight fields for any model whose
forward maps token ids (B, S) to logits (B, S, V) (transformers' ``*ForCausalLM`` or a native
module). Families subclass `CausalLMCheckpoint` and add their own fields (deltas, gradients).

Also the tiny in-process models tests use instead of the Hub::

    ckpt = CausalLMCheckpoint(ref, tiny_gpt_neox(), batches=random_token_batches(64, 4, 16))
    ckpt.per_example_loss(ckpt.eval_batches()[0])   # (B, S-1) per-token cross-entropy

Imports torch: only plugins and tests import this module, never ``import harness``.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from harness.api import Checkpoint, CheckpointRef, FieldUnavailable


def select_names(names: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """Names matching any glob pattern (all names when patterns is None)."""
    if patterns is None:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def tokens_fingerprint(batches: Sequence[torch.Tensor], source: str = "") -> str:
    """A short hash of token batches (shapes and ids) and their source: provenance of evaluation data."""
    h = hashlib.sha256(source.encode())
    for b in batches:
        h.update(str(tuple(b.shape)).encode())
        h.update(b.detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Logits of a causal LM (transformers output, tuple or tensor) for ``input_ids``."""
    out = model(input_ids=input_ids, attention_mask=attention_mask) if attention_mask is not None else model(
        input_ids
    )
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)


def per_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position, shape (B, S-1), computed in fp32."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view(input_ids.shape[0], -1)


class CausalLMCheckpoint(Checkpoint):
    """A causal LM with fixed evaluation token batches (each a LongTensor (B, S))."""

    def __init__(
        self,
        ref: CheckpointRef,
        model: torch.nn.Module,
        batches: Sequence[torch.Tensor] | None = None,
        *,
        splits: dict[str, Sequence[torch.Tensor]] | None = None,
        data_source: str = "",
        device: str | torch.device = "cpu",
        tokenizer: Any = None,
    ):
        super().__init__(ref)
        self._model = model.to(device).eval()
        self.device = torch.device(device)
        self._splits = {k: list(v) for k, v in (splits or {}).items()}
        if batches is not None:
            self._splits.setdefault("val", list(batches))
        self._data_source = data_source
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        """The tokenizer given at construction (`FieldUnavailable` when there is none)."""
        if self._tokenizer is None:
            return super().tokenizer
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The model, in eval mode, on this checkpoint's device."""
        return self._model

    def eval_batches(self, split: str = "val") -> list[torch.Tensor]:
        """The fixed token batches of ``split`` (`FieldUnavailable` for a split it does not have)."""
        if split not in self._splits:
            raise FieldUnavailable(f"no evaluation split {split!r} (have: {', '.join(self._splits) or 'none'})")
        return self._splits[split]

    @property
    def data_fingerprint(self) -> str | None:
        """Hash of every split's batches and the data source."""
        if not self._splits:
            return None
        return tokens_fingerprint([b for s in sorted(self._splits) for b in self._splits[s]], self._data_source)

    def logits(self, batch: Any, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Logits (B, S, V) of ``batch`` under ``model`` (default: this checkpoint's)."""
        return model_logits(model or self._model, batch.to(self.device))

    def per_example_loss(self, batch: Any, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Next-token cross-entropy per position, shape (B, S-1)."""
        batch = batch.to(self.device)
        return per_token_loss(self.logits(batch, model), batch)

    def field_kinds(self) -> tuple[str, ...]:
        """``weights`` only; families add deltas and gradients."""
        return ("weights",)

    def field(self, kind: str, modules: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """The model's parameters (``weights``), selected by glob patterns on their names."""
        if kind != "weights":
            return super().field(kind, modules)
        params = dict(self._model.named_parameters())
        return ((n, params[n].detach()) for n in select_names(list(params), modules))

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self._model = None  # type: ignore[assignment]


# ---- tiny models and data for tests and demos (no network) ----------------------------


def tiny_gpt_neox(vocab_size: int = 64, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
                  max_positions: int = 128) -> torch.nn.Module:
    """A randomly initialised GPT-NeoX (Pythia architecture) small enough for unit tests."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_positions,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return GPTNeoXForCausalLM(cfg).eval()


def random_token_batches(vocab_size: int, n_batches: int, batch_size: int, seq_len: int = 16,
                         seed: int = 0) -> list[torch.Tensor]:
    """Seeded random token batches (n_batches of (batch_size, seq_len)) for tests and demos."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (batch_size, seq_len), generator=g) for _ in range(n_batches)]
