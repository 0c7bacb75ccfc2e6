"""Facts about the public Pythia suite: sizes, the 154 checkpoint steps, tokens and learning
rate per step, parameter counts. Source: the EleutherAI/pythia README and its
``models/*.yml`` configs at commit a19eecb (Biderman et al. 2023), not memory.

    >>> steps()[:4], len(steps()), steps()[-1]
    ([0, 1, 2, 4], 154, 143000)
    >>> tokens_seen(1000)                       # batch 1024 x 2048 tokens per step
    2097152000
    >>> round(learning_rate("160m", 143000) / 6e-4, 3)   # cosine decay to 10%
    0.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: ``"extra-save-iters"`` and ``"checkpoint-factor"``/``"train-iters"`` of models/*.yml
EXTRA_SAVE_ITERS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CHECKPOINT_FACTOR = 1000
TRAIN_ITERS = 143_000
#: 1024 sequences x 2048 tokens
TOKENS_PER_STEP = 1024 * 2048
#: warmup 1% of training, then cosine decay to min_lr = 0.1 * lr (models/*.yml)
WARMUP_FRACTION = 0.01
MIN_LR_RATIO = 0.1
#: GPT-NeoX-20B tokenizer, vocabulary padded to 50304 in the HF configs
VOCAB_SIZE = 50304
SEQ_LEN = 2048


@dataclass(frozen=True)
class Size:
    n_layers: int
    d_model: int
    n_heads: int
    lr: float
    deduped: bool = True  # a -deduped variant exists


#: section 4.1 of the note
SIZES: dict[str, Size] = {
    "14m": Size(6, 128, 4, 1.0e-3, deduped=False),
    "31m": Size(6, 256, 8, 1.0e-3, deduped=False),
    "70m": Size(6, 512, 8, 1.0e-3),
    "160m": Size(12, 768, 12, 6.0e-4),
    "410m": Size(24, 1024, 16, 3.0e-4),
    "1b": Size(16, 2048, 8, 3.0e-4),
    "1.4b": Size(24, 2048, 16, 2.0e-4),
    "2.8b": Size(32, 2560, 32, 1.6e-4),
    "6.9b": Size(32, 4096, 32, 1.2e-4),
    "12b": Size(36, 5120, 40, 1.2e-4),
}


def steps(extra: tuple[int, ...] = EXTRA_SAVE_ITERS, factor: int = CHECKPOINT_FACTOR,
          train_iters: int = TRAIN_ITERS) -> list[int]:
    """Saved steps: the extra early saves, then every ``factor`` steps up to ``train_iters``."""
    return sorted(set(extra) | set(range(factor, train_iters + 1, factor)))


def tokens_seen(step: int, tokens_per_step: int = TOKENS_PER_STEP) -> int:
    return int(step) * int(tokens_per_step)


def lr_at(step: int, max_lr: float, total: int, warmup: int, min_ratio: float = MIN_LR_RATIO) -> float:
    """GPT-NeoX's ``AnnealingLR`` (cosine): linear warmup from 0, then cosine from ``max_lr``
    to ``min_ratio * max_lr`` at ``total`` (held there afterwards)."""
    if warmup > 0 and step <= warmup:
        return max_lr * step / warmup
    min_lr = min_ratio * max_lr
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def learning_rate(size: str, step: int) -> float:
    """The learning rate of public Pythia ``size`` at ``step``."""
    warmup = int(round(WARMUP_FRACTION * TRAIN_ITERS))
    return lr_at(step, SIZES[size].lr, TRAIN_ITERS, warmup)


def gpt_neox_n_params(vocab: int, d_model: int, n_layers: int, d_ff: int | None = None) -> int:
    """Parameters of an untied GPT-NeoX (embeddings and unembedding included, as Pythia counts
    them): per layer two LayerNorms, fused QKV, output projection and the 2-matrix GeLU MLP."""
    d_ff = d_ff or 4 * d_model
    per_layer = 4 * d_model + (3 * d_model * d_model + 3 * d_model) + (d_model * d_model + d_model) \
        + (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)
    return 2 * vocab * d_model + n_layers * per_layer + 2 * d_model


def n_params(size: str) -> int:
    s = SIZES[size]
    return gpt_neox_n_params(VOCAB_SIZE, s.d_model, s.n_layers)


def repo_id(size: str, deduped: bool) -> str:
    return f"EleutherAI/pythia-{size}{'-deduped' if deduped else ''}"
