"""Text data for language-model families: corpora, a locally trained tokenizer, fixed batches.

Family-agnostic and shared by every LM family (Pythia, Pico, ...). The ``data`` config group
(``conf/data/*.yaml``) selects a corpus; a family receives that node as ``data=`` (a dict) and
turns it into token batches that are identical for every checkpoint of a run::

    from harness.data import load_corpus, train_tokenizer, token_blocks, fixed_batches

    corpus = load_corpus({"name": "pydoc"})                  # offline, always present
    tok = train_tokenizer(corpus.texts, vocab_size=512, cache_dir="~/.cache/harness/tok")
    blocks = token_blocks(tok, corpus.texts, seq_len=64)      # LongTensor (N, 64)
    val = fixed_batches(blocks, n_batches=4, batch_size=8, seed=0, split="val",
                        dataset_id=corpus.dataset_id)
    val.batches[0].shape, val.fingerprint                     # (8, 64), '3f2a...'

Sources (``name`` in the data node):

* ``pydoc``: the topics of Python's own reference manual (``pydoc_data.topics``), always
  present offline: the default for tests, demos and the mini-suite builders.
* ``text_files``: ``paths`` = files, directories (``*.txt`` inside, recursively) or glob
  patterns; one document per file.
* ``jsonl``: ``paths`` of JSON-lines files; ``text_field`` (default ``text``) holds the text,
  ``id_field`` (optional) the document id.
* ``hf_dataset``: a Hugging Face dataset (``path``, ``config``, ``split``, ``text_field``,
  optional ``data_files`` for builder datasets such as ``json``), online or from the local
  datasets cache.
* ``default``: the family's own default data; `resolve_data_config` maps it to a concrete node.

Every source accepts ``max_docs`` (keep the first N documents after sorting by id, for speed).

Splits: documents are tokenised in order and cut into blocks; the last ``val_fraction`` of the
blocks form ``val``, the rest ``train`` (a tail split keeps val documents mostly unseen in
train). Batches draw block indices with a seeded generator, and the fingerprint hashes the
dataset id, split, block ids, ``seq_len`` and the token contents, so two runs that report the
same fingerprint have evaluated exactly the same tokens.

This module must not import torch, transformers or tokenizers at module level: ``import
harness`` stays light. They are imported inside the functions that need them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api import ConfigError, ParameterError, check_choice, check_range

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

__all__ = [
    "SOURCES",
    "SPLITS",
    "Corpus",
    "FixedBatches",
    "batch_settings",
    "fixed_batches",
    "load_corpus",
    "load_texts",
    "resolve_data_config",
    "split_indices",
    "token_blocks",
    "train_tokenizer",
]

SOURCES = ("pydoc", "text_files", "jsonl", "hf_dataset")
SPLITS = ("train", "val")
#: special tokens of the locally trained tokenizer (GPT-NeoX's names)
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
#: bump when the tokenizer training recipe changes (invalidates the cache)
_TOKENIZER_RECIPE = "bytelevel-bpe-v1"

#: batching keys a data node may carry (families read them with `batch_settings`)
BATCH_DEFAULTS: dict[str, Any] = {"seq_len": 128, "batch_size": 8, "n_batches": 4, "val_fraction": 0.1}


# ---- corpora --------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Documents with stable ids. ``dataset_id`` names the source and hashes its content, so
    a changed file (or another Python version's pydoc topics) changes every fingerprint."""

    dataset_id: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


def resolve_data_config(cfg: Mapping[str, Any] | None, default: Mapping[str, Any]) -> dict[str, Any]:
    """The concrete data node: ``cfg`` unless it is missing or ``name: default``, then the
    family's ``default`` updated with any other keys the user set (e.g. ``data.seq_len``)."""
    cfg = dict(cfg or {})
    name = cfg.get("name", "default")
    if name in (None, "default"):
        merged = dict(default)
        merged.update({k: v for k, v in cfg.items() if k != "name" and v is not None})
        return merged
    return cfg


def load_texts(cfg: Mapping[str, Any]) -> list[str]:
    """The documents of the data node ``cfg`` as plain strings (see `load_corpus`)."""
    return list(load_corpus(cfg).texts)


def load_corpus(cfg: Mapping[str, Any]) -> Corpus:
    """Load the documents the data node ``cfg`` names (``name`` = one of `SOURCES`).

    Raises `ParameterError` for unknown sources or bad parameters and `ConfigError` when the
    data cannot be found (missing files, an empty corpus, no network for ``hf_dataset``).
    """
    name = cfg.get("name")
    check_choice("data.name", name, SOURCES)
    max_docs = cfg.get("max_docs")
    if max_docs is not None:
        check_range("data.max_docs", max_docs, 1)
    loader = {"pydoc": _load_pydoc, "text_files": _load_text_files, "jsonl": _load_jsonl,
              "hf_dataset": _load_hf}[name]
    pairs, source_id = loader(cfg)
    pairs = [(i, t) for i, t in pairs if t and t.strip()]
    if not pairs:
        raise ConfigError(f"data source {name!r} ({source_id}) holds no non-empty documents")
    if name != "hf_dataset":  # file sources: order by id so directory listing order never matters
        pairs.sort(key=lambda p: p[0])
    if max_docs is not None:
        pairs = pairs[: int(max_docs)]
    ids = tuple(p[0] for p in pairs)
    texts = tuple(p[1] for p in pairs)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"data source {name!r} ({source_id}) has duplicate document ids")
    digest = _hash_docs(ids, texts)
    return Corpus(dataset_id=f"{name}:{source_id}:{digest}", ids=ids, texts=texts)


def _hash_docs(ids: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i, t in zip(ids, texts):
        for s in (i, t):
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()[:16]


def _load_pydoc(cfg: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    import pydoc_data.topics as topics

    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return list(topics.topics.items()), version


def _paths(cfg: Mapping[str, Any], suffixes: tuple[str, ...]) -> list[Path]:
    raw = cfg.get("paths")
    if raw is None or raw == [] or raw == "":
        raise ParameterError("data.paths", raw, "a non-empty list of files, directories or glob patterns")
    if isinstance(raw, (str, os.PathLike)):
        raw = [raw]
    found: list[Path] = []
    for entry in raw:
        p = Path(os.path.expanduser(str(entry)))
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in suffixes)
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
            if not matches:
                raise ConfigError(f"data.paths: {entry!r} matches no file")
            found += matches
    return found


def _load_text_files(cfg: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    files = _paths(cfg, (".txt", ".text", ".md", ".rst"))
    root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    encoding = cfg.get("encoding", "utf-8")
    pairs = [(str(f.resolve().relative_to(root)), f.read_text(encoding=encoding, errors="replace")) for f in files]
    return pairs, root.name or "files"


def _load_jsonl(cfg: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    files = _paths(cfg, (".jsonl", ".json"))
    text_field = cfg.get("text_field", "text")
    id_field = cfg.get("id_field")
    pairs: list[tuple[str, str]] = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{f}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or text_field not in row:
                    raise ConfigError(f"{f}:{lineno}: no field {text_field!r} (set data.text_field)")
                doc_id = str(row[id_field]) if id_field else f"{f.name}:{lineno:08d}"
                pairs.append((doc_id, str(row[text_field])))
    return pairs, "+".join(sorted({f.stem for f in files}))


def _load_hf(cfg: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    path = cfg.get("path")
    if not path:
        raise ParameterError("data.path", path, "a Hugging Face dataset id, e.g. wikitext")
    config, split = cfg.get("config"), cfg.get("split", "train")
    text_field = cfg.get("text_field", "text")
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets ships with lm-eval
        raise ConfigError("data.name=hf_dataset needs the `datasets` package") from e
    max_docs = cfg.get("max_docs")
    split_spec = f"{split}[:{int(max_docs)}]" if max_docs else split
    try:
        kw = {"data_files": cfg["data_files"]} if cfg.get("data_files") else {}
        ds = datasets.load_dataset(path, config, split=split_spec, revision=cfg.get("revision"), **kw)
    except Exception as e:  # network, missing cache, unknown dataset: one clear message
        raise ConfigError(f"cannot load Hugging Face dataset {path!r} ({config}, {split}): {e}") from e
    if text_field not in ds.column_names:
        raise ConfigError(f"dataset {path!r} has no column {text_field!r} (has: {', '.join(ds.column_names)})")
    pairs = [(f"{i:09d}", str(t)) for i, t in enumerate(ds[text_field])]
    return pairs, f"{path}/{config or ''}/{split}"


# ---- tokenizer ------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-NeoX's kind, with its ``<|endoftext|>``/``<|padding|>``
    specials) trained locally on ``texts`` with the `tokenizers` library.

    With ``cache_dir`` the result is saved with ``save_pretrained`` under
    ``cache_dir/tokenizer-<hash>`` (hash of the texts, vocab size and recipe) and reused: the
    same corpus always gives the same tokenizer files, without retraining.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    check_range("vocab_size", vocab_size, 260)  # 256 byte symbols + specials at least
    texts = list(texts)
    h = hashlib.sha256(f"{_TOKENIZER_RECIPE}|{vocab_size}|{min_frequency}".encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    key = h.hexdigest()[:16]
    target = Path(cache_dir).expanduser() / f"tokenizer-{key}" if cache_dir is not None else None
    if target is not None and (target / "tokenizer.json").exists():
        logger.debug("reusing tokenizer %s", target)
        return PreTrainedTokenizerFast.from_pretrained(str(target))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    if target is not None:
        from harness.atomic import atomic_dir

        # a concurrent builder never sees a half-written tokenizer directory; when another
        # process renamed its (identical) copy in first, ours is dropped
        with atomic_dir(target, replace=False) as tmp:
            fast.save_pretrained(str(tmp))
        return PreTrainedTokenizerFast.from_pretrained(str(target))
    return fast


# ---- token blocks and fixed batches ---------------------------------------------------


def token_blocks(tokenizer: Any, texts: Iterable[str], seq_len: int, *, add_eos: bool = True) -> torch.Tensor:
    """Concatenate the tokenised documents (each followed by EOS) and cut them into
    non-overlapping blocks of ``seq_len`` tokens: a LongTensor (N, seq_len). The incomplete
    tail is dropped. Raises `ConfigError` when the corpus is shorter than one block."""
    import torch

    check_range("seq_len", seq_len, 2)
    seq_len = int(seq_len)
    eos = tokenizer.eos_token_id if add_eos else None
    ids: list[int] = []
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        if eos is not None:
            ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise ConfigError(f"corpus has {len(ids)} tokens: fewer than one block of seq_len={seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def split_indices(n_blocks: int, split: str, val_fraction: float = 0.1) -> list[int]:
    """Block indices of ``split``: the last ``ceil(val_fraction * n)`` blocks (at least one)
    are ``val``, the others ``train``."""
    check_choice("split", split, SPLITS)
    check_range("val_fraction", val_fraction, 0, 1, low_inclusive=False, high_inclusive=False)
    if n_blocks < 2:
        raise ConfigError(f"{n_blocks} token block(s): need at least 2 to form train and val splits")
    n_val = min(n_blocks - 1, max(1, math.ceil(round(val_fraction * n_blocks, 9))))
    cut = n_blocks - n_val
    return list(range(cut, n_blocks)) if split == "val" else list(range(cut))


@dataclass(frozen=True)
class FixedBatches:
    """Seeded batches of one split and their provenance.

    ``example_ids[b]`` are the block indices (rows of the `token_blocks` tensor) in batch b;
    ``fingerprint`` hashes dataset id, split, those ids, ``seq_len`` and the tokens.
    """

    batches: list[Any]
    fingerprint: str
    example_ids: list[list[int]]
    split: str
    seq_len: int
    dataset_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.batches)


def fixed_batches(
    blocks: torch.Tensor,
    n_batches: int,
    batch_size: int,
    seed: int,
    split: str = "val",
    *,
    dataset_id: str = "",
    val_fraction: float = 0.1,
) -> FixedBatches:
    """``n_batches`` batches of ``batch_size`` blocks of ``split``, drawn without replacement
    by a generator seeded with ``seed`` (the same blocks for every checkpoint and every call).

    When the split holds fewer than ``n_batches * batch_size`` blocks, the number of batches is
    reduced (logged) rather than repeating examples; at least one full batch is required.
    """
    import torch

    check_range("n_batches", n_batches, 1)
    check_range("batch_size", batch_size, 1)
    pool = split_indices(int(blocks.shape[0]), split, val_fraction)
    n_batches, batch_size = int(n_batches), int(batch_size)
    if len(pool) < batch_size:
        raise ConfigError(
            f"split {split!r} has {len(pool)} blocks of {blocks.shape[1]} tokens: fewer than batch_size={batch_size}"
        )
    fit = len(pool) // batch_size
    if fit < n_batches:
        logger.info("split %r has %d blocks: %d batches instead of %d", split, len(pool), fit, n_batches)
        n_batches = fit
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(pool), generator=g)[: n_batches * batch_size].tolist()
    example_ids = [[pool[i] for i in order[b * batch_size:(b + 1) * batch_size]] for b in range(n_batches)]
    batches = [blocks[ids].clone() for ids in example_ids]
    seq_len = int(blocks.shape[1])
    h = hashlib.sha256(json.dumps(
        {"dataset_id": dataset_id, "split": split, "seq_len": seq_len, "example_ids": example_ids}, sort_keys=True
    ).encode())
    for b in batches:
        h.update(b.to(torch.int64).numpy().tobytes())
    return FixedBatches(
        batches=batches, fingerprint=h.hexdigest()[:16], example_ids=example_ids, split=split,
        seq_len=seq_len, dataset_id=dataset_id,
        meta={"seed": int(seed), "val_fraction": val_fraction, "n_blocks": int(blocks.shape[0])},
    )


def batch_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The batching keys of a data node (``seq_len``, ``batch_size``, ``n_batches``,
    ``val_fraction``) with defaults filled in and ranges checked."""
    out = {k: cfg.get(k, v) if cfg.get(k) is not None else v for k, v in BATCH_DEFAULTS.items()}
    check_range("data.seq_len", out["seq_len"], 2)
    check_range("data.batch_size", out["batch_size"], 1)
    check_range("data.n_batches", out["n_batches"], 1)
    check_range("data.val_fraction", out["val_fraction"], 0, 1, low_inclusive=False, high_inclusive=False)
    for k in ("seq_len", "batch_size", "n_batches"):
        out[k] = int(out[k])
    out["val_fraction"] = float(out["val_fraction"])
    return out
