"""A tokenizer and tiny causal LM built in-process, for tests, benchmarks and the offline demo.

    >>> tok = pydoc_tokenizer(vocab_size=512)          # byte-level BPE on pydoc_data.topics
    >>> model = tiny_lm(tok)                          # GPT-NeoX, vocabulary matched to tok
    >>> save_pretrained(model, tok, "/tmp/tiny")      # what `lm_eval --model hf` can load

No network: the tokenizer is trained on the stdlib's documentation text in well under a second.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def pydoc_tokenizer(vocab_size: int = 512, model_max_length: int = 256) -> Any:
    """A byte-level BPE trained on `pydoc_data.topics`, wrapped as ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from harness_plugins.metrics.lm_eval.data import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus().values()), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD,
        model_max_length=model_max_length,
    )


def tiny_lm(tokenizer: Any, hidden: int = 32, layers: int = 2, seed: int = 0) -> Any:
    """`harness.lm.tiny_gpt_neox` with its vocabulary and context matched to ``tokenizer``."""
    from harness.lm import tiny_gpt_neox

    return tiny_gpt_neox(
        vocab_size=len(tokenizer), hidden=hidden, layers=layers, seed=seed,
        max_positions=tokenizer.model_max_length,
    )


def save_pretrained(model: Any, tokenizer: Any, directory: str | Path) -> Path:
    """Save model (safetensors) and tokenizer side by side: a directory HFLM/AutoModel can load."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
