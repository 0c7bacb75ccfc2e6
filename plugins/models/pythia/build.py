"""The ``pythia_mini`` builder: a small suite of GPT-NeoX models in Pythia's architecture,
trained locally, saved in the Hub's layout, with training logs and probe gradients.

    python -m harness.build suite=pythia_mini                       # default: 4 sizes x 1500 steps, ~3.5 min on 2 CPU cores
    python -m harness.build suite=pythia_mini steps=2000 sizes=[s,m,l,xl] device=cuda
    python -m harness model=pythia model.source=local model.root=<printed dir> metric=loss

What is reproduced from Pythia (research note pico_pythia.md section 4): the architecture
(parallel attention+MLP residual, rotary on 25% of head dims, untied embeddings, LayerNorm,
4x GeLU MLP), the same data in the same order for every size, the same init seed for every
size, Adam(0.9, 0.95) with eps 1e-8, weight decay 0.1 and gradient clipping at 1.0, linear warmup
then cosine decay to 10% of the peak rate, and the checkpoint schedule (step 0, 1, 2, 4, ...
powers of two, then every ``checkpoint_every`` steps). What is NOT: the Pile (the corpus is the
``data`` node, pydoc by default), the GPT-NeoX-20B tokenizer (a byte-level BPE is trained on the
corpus), fp16 training, the sizes and the batch.

Layout of the returned directory (cached under ``<cache_dir>/pythia_mini-<params hash>``)::

    suite.json                                      params, sizes, data fingerprints, complete flag
    pythia-mini-<size>/model_info.json              size, n_params, lr schedule, tokens per step, steps
    pythia-mini-<size>/train_log.jsonl              per update: step, loss, learning_rate, tokens_seen, grad_norm
    pythia-mini-<size>/step<N>/config.json, model.safetensors, tokenizer files
    pythia-mini-<size>/step<N>/probe_gradients.safetensors   raw gradient of the probe loss
    pythia-mini-<size>/step<N>/probe.json                    probe token ids + fingerprint + loss

Log semantics: row ``step = t`` is update t (1-based): the loss of its batch under the weights
of checkpoint t-1, and the learning rate it applied. Checkpoint ``step<N>`` holds the weights
after N updates (step0 = initialisation), as in Pythia.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.api import ConfigError, ParameterError, check_choice, check_range
from harness.atomic import atomic_dir

from . import schedule as S

logger = logging.getLogger(__name__)

#: mini sizes: (layers, d_model, heads); all share vocabulary, data and schedule
MINI_SIZES: dict[str, tuple[int, int, int]] = {
    "xs": (2, 32, 4),
    "s": (2, 48, 4),
    "m": (3, 64, 4),
    "l": (4, 96, 4),
    "xl": (6, 192, 6),
    "xxl": (8, 384, 8),
}
#: bump when the recipe changes: invalidates every cached build
RECIPE_VERSION = 2

DEFAULTS: dict[str, Any] = {
    "sizes": ["xs", "s", "m", "l"],
    # 1500 updates (~2.3 epochs of the pydoc train split): long enough that the loss decelerates
    # well inside the run and that pydoc_word orders the sizes (docs/pythia.md, measured figures)
    "steps": 1500,            # optimiser updates
    "checkpoint_every": 250,  # after the log-spaced early saves 0, 1, 2, 4, ..., 128
    # 128-token blocks: the evaluation data's default seq_len (conf/data), so held-out loss is never
    # measured on positions the models were not trained at; 4 x 128 = 512 tokens per step
    "seq_len": 128,
    "batch_size": 4,
    "vocab_size": 512,
    "lr": 3e-3,               # peak rate of the smallest size; larger sizes scale by (32/d)**0.5
    "warmup_fraction": 0.01,  # Pythia: 1% of training
    "min_lr_ratio": 0.1,      # Pythia: cosine to 10%
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "probe_batch_size": 8,
    "seed": 1234,             # Pythia's seed: same init seed and data order for every size
    "data": {"name": "pydoc"},
    "val_fraction": 0.1,
    "device": "cpu",
    "threads": None,          # torch threads (None = torch's default)
}


def build(**params: Any) -> Path:
    """Build (or reuse) the suite and return its directory.

    The directory is ``out`` when given, else ``<cache_dir>/pythia_mini-<hash of params>``
    (``cache_dir`` defaults to ``$HARNESS_CACHE`` or ``~/.cache/harness``). A complete build
    with the same parameters there is reused unless ``force=true``. ``out``, ``cache_dir``,
    ``force``, ``device`` and ``threads`` are not part of the key."""
    cache_dir = params.pop("cache_dir", None) or os.environ.get("HARNESS_CACHE") or "~/.cache/harness"
    out = params.pop("out", None)
    force = _as_bool(params.pop("force", False))
    p = _normalise(params)
    key = hashlib.sha256(json.dumps({k: v for k, v in p.items() if k not in ("device", "threads")} |
                                    {"recipe": RECIPE_VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(out).expanduser() if out else Path(cache_dir).expanduser() / f"pythia_mini-{key}"
    marker = root / "suite.json"
    if marker.is_file() and not force and json.loads(marker.read_text()).get("key") == key:
        logger.info("pythia_mini: reusing %s", root)
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise ConfigError(f"{root}: exists and is not a pythia_mini build; refusing to overwrite it")
    with atomic_dir(root) as tmp:
        _build_into(tmp, p, key)
    return root


def _as_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")


def _normalise(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ParameterError(sorted(unknown)[0], params[sorted(unknown)[0]],
                             "one of the builder's keys: " + ", ".join(sorted(DEFAULTS) + ["cache_dir", "force"]))
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None or k == "threads"}}
    sizes = p["sizes"]
    if isinstance(sizes, str):
        sizes = [s for s in sizes.strip("[]").replace(" ", "").split(",") if s]
    p["sizes"] = list(sizes)
    if not p["sizes"]:
        raise ParameterError("sizes", sizes, "a non-empty list of " + ", ".join(MINI_SIZES))
    for s in p["sizes"]:
        check_choice("sizes", s, list(MINI_SIZES))
    for k in ("steps", "checkpoint_every", "seq_len", "batch_size", "vocab_size", "probe_batch_size", "seed"):
        p[k] = int(p[k])
    check_range("steps", p["steps"], 1)
    check_range("checkpoint_every", p["checkpoint_every"], 1)
    check_range("seq_len", p["seq_len"], 2, 2048)
    check_range("batch_size", p["batch_size"], 1)
    check_range("vocab_size", p["vocab_size"], 260)
    check_range("probe_batch_size", p["probe_batch_size"], 1)
    for k in ("lr", "warmup_fraction", "min_lr_ratio", "weight_decay", "grad_clip", "val_fraction"):
        p[k] = float(p[k])
    check_range("lr", p["lr"], 0, low_inclusive=False)
    check_range("warmup_fraction", p["warmup_fraction"], 0, 1)
    check_range("min_lr_ratio", p["min_lr_ratio"], 0, 1)
    check_range("weight_decay", p["weight_decay"], 0)
    check_range("grad_clip", p["grad_clip"], 0, low_inclusive=False)
    check_range("val_fraction", p["val_fraction"], 0, 1, low_inclusive=False, high_inclusive=False)
    from harness.data import resolve_data_config

    data = dict(p["data"]) if isinstance(p["data"], Mapping) else {"name": str(p["data"])}
    p["data"] = resolve_data_config(data, DEFAULTS["data"])  # e.g. data.max_docs=5 alone keeps pydoc
    return p


def save_steps(steps: int, every: int) -> list[int]:
    """Pythia's schedule on a small scale: 0, powers of two below ``every``, then every ``every``
    steps, and always the last step."""
    early = [0] + [2 ** i for i in range(0, 64) if 2 ** i < every and 2 ** i <= steps]
    return sorted(set(early) | set(range(every, steps + 1, every)) | {steps})


def mini_config(size: str, vocab_size: int, seq_len: int):
    """The GPT-NeoX config of a mini size, in Pythia's architecture."""
    from transformers import GPTNeoXConfig

    layers, d, heads = MINI_SIZES[size]
    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * d, max_position_embeddings=max(seq_len, 128), rotary_pct=0.25,
        rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu",
        layer_norm_eps=1e-5, initializer_range=0.02, bos_token_id=0, eos_token_id=0,
        attention_dropout=0.0, hidden_dropout=0.0,
    )


def peak_lr(p: Mapping[str, Any], size: str) -> float:
    return p["lr"] * (32 / MINI_SIZES[size][1]) ** 0.5


def _build_into(root: Path, p: dict[str, Any], key: str) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    from harness.data import fixed_batches, load_corpus, split_indices, token_blocks, train_tokenizer

    from .checkpoint import probe_gradients

    hf_logging.disable_progress_bar()
    if p["threads"]:
        torch.set_num_threads(int(p["threads"]))
    t0 = time.time()
    device = torch.device(p["device"])
    corpus = load_corpus(p["data"])
    tok = train_tokenizer(corpus.texts, p["vocab_size"], root.parent / "tokenizers")
    blocks = token_blocks(tok, corpus.texts, p["seq_len"])
    train_ids = split_indices(blocks.shape[0], "train", p["val_fraction"])
    probe = fixed_batches(blocks, 1, p["probe_batch_size"], p["seed"] + 1, "val",
                          dataset_id=corpus.dataset_id, val_fraction=p["val_fraction"])
    probe_ids = probe.batches[0]
    order = _data_order(len(train_ids), p["steps"], p["batch_size"], p["seed"])
    order_fp = hashlib.sha256(json.dumps([train_ids[i] for i in order]).encode()).hexdigest()[:16]
    saves = save_steps(p["steps"], p["checkpoint_every"])
    total, warmup = p["steps"], int(round(p["warmup_fraction"] * p["steps"]))
    tokens_per_step = p["batch_size"] * p["seq_len"]
    probe_json = {"input_ids": probe_ids.tolist(), "fingerprint": probe.fingerprint, "dataset_id": corpus.dataset_id,
                  "split": "val", "example_ids": probe.example_ids[0], "seq_len": p["seq_len"]}

    for size in p["sizes"]:
        model_id = f"pythia-mini-{size}"
        mdir = root / model_id
        mdir.mkdir(parents=True)
        torch.manual_seed(p["seed"])  # same init seed for every size
        model = GPTNeoXForCausalLM(mini_config(size, len(tok), p["seq_len"])).to(device)
        n_params = sum(t.numel() for t in model.parameters())
        lr = peak_lr(p, size)
        decay = [q for n, q in model.named_parameters() if q.ndim >= 2]
        no_decay = [q for n, q in model.named_parameters() if q.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": p["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.95), eps=1e-8)
        (mdir / "model_info.json").write_text(json.dumps({
            "size": size, "n_params": n_params, "layers": MINI_SIZES[size][0], "d_model": MINI_SIZES[size][1],
            "heads": MINI_SIZES[size][2], "tokens_per_step": tokens_per_step, "lr": lr, "warmup_steps": warmup,
            "total_steps": total, "min_lr_ratio": p["min_lr_ratio"], "steps": saves, "seed": p["seed"],
            "data_order_fingerprint": order_fp,
        }, indent=1))
        with open(mdir / "train_log.jsonl", "w") as log:
            for t in range(0, p["steps"] + 1):
                if t > 0:
                    batch = blocks[[train_ids[i] for i in order[(t - 1) * p["batch_size"]: t * p["batch_size"]]]]
                    step_lr = S.lr_at(t, lr, total, warmup, p["min_lr_ratio"])
                    for g in opt.param_groups:
                        g["lr"] = step_lr
                    model.train()
                    out = model(input_ids=batch.to(device), labels=batch.to(device))
                    opt.zero_grad(set_to_none=True)
                    out.loss.backward()
                    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), p["grad_clip"])
                    opt.step()
                    log.write(json.dumps({"step": t, "loss": out.loss.item(), "learning_rate": step_lr,
                                          "tokens_seen": t * tokens_per_step, "grad_norm": float(gnorm)}) + "\n")
                if t in saves:
                    _save_checkpoint(mdir / f"step{t}", model, tok, probe_ids.to(device), probe_json,
                                     probe_gradients, save_file)
        logger.info("pythia_mini: %s (%d params) trained in %.1fs", model_id, n_params, time.time() - t0)

    (root / "suite.json").write_text(json.dumps({
        "suite": "pythia_mini", "key": key, "params": p, "sizes": p["sizes"],
        "models": [f"pythia-mini-{s}" for s in p["sizes"]], "dataset_id": corpus.dataset_id,
        "probe_fingerprint": probe.fingerprint, "data_order_fingerprint": order_fp,
        "build_seconds": round(time.time() - t0, 2), "complete": True,
    }, indent=1))


def _data_order(n_train: int, steps: int, batch_size: int, seed: int) -> list[int]:
    """Indices into the train blocks for every update, epoch after epoch, each epoch a seeded
    permutation: the same sequence for every size."""
    import torch

    need, out, epoch = steps * batch_size, [], 0
    while len(out) < need:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        out += torch.randperm(n_train, generator=g).tolist()
        epoch += 1
    return out[:need]


def _save_checkpoint(d: Path, model, tok, probe_ids, probe_json, probe_gradients, save_file) -> None:
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    grads, loss = probe_gradients(model, probe_ids)
    save_file({k: v.contiguous() for k, v in grads.items()}, str(d / "probe_gradients.safetensors"))
    (d / "probe.json").write_text(json.dumps({**probe_json, "loss": loss}))
