"""The ``pico_mini`` builder: a small Pico suite trained on CPU, written in pico-train's layout.

    python -m harness.build suite=pico_mini                    # cached under ~/.cache/harness
    python -m harness.build suite=pico_mini widths=[16,32] steps=60 out=runs/pico_mini

Like the real suite, every run shares depth, heads, data and data order; only the width
(``d_model``, FFN = 4 d) changes. Each run is a pico-train run directory::

    <out>/pico-mini-d<w>-1/training_config.yaml
    <out>/pico-mini-d<w>-1/eval_results/step_<N>.json                 {"<data>": perplexity}
    <out>/pico-mini-d<w>-1/checkpoints/step_<N>/{config.json, model.safetensors, tokenizer.json, ...}
    <out>/pico-mini-d<w>-1/checkpoints/step_<N>/learning_dynamics/{train,val}_*.pt, train_data/

Checkpoints at step 0, every ``save_every`` steps and the last step. Learning dynamics follow
pico-train exactly: ``train`` = the batch about to be used for update N -> N+1 evaluated with
the step-N weights, ``val`` = a fixed validation set; activations are the module outputs at the
last input position; gradients are the SUM over sub-batches of ``ld_batch_size`` sequences of
mean-loss gradients (pico's convention; readers divide by the sub-batch count). The last step
stores only ``val`` (no next batch), as pico-train. Fabric optimizer states are not written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness import learning_dynamics as ld
from harness.api import check_range
from harness.atomic import atomic_dir

logger = logging.getLogger(__name__)

RECIPE = "pico-mini-v1"  # bump when training changes (invalidates cached builds)
DEFAULTS: dict[str, Any] = {
    "widths": [16, 32, 48, 64], "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 512,
    "seq_len": 64, "batch_size": 8, "steps": 120, "save_every": 40, "lr": 3e-3, "warmup": 10,
    "ld_batch_size": 4, "n_val": 16, "seed": 42, "data": "pydoc",
}


def default_cache() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", "~/.cache/harness")).expanduser()


def build(out: str | None = None, cache_dir: str | None = None, force: bool = False, **params: Any) -> Path:
    """Train the suite (or reuse an identical finished build) and return its directory."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        from harness.api import ParameterError

        k = sorted(unknown)[0]
        raise ParameterError(k, params[k], "one of " + ", ".join(DEFAULTS))
    p = {**DEFAULTS, **params}
    p["widths"] = [int(w) for w in (p["widths"] if isinstance(p["widths"], list | tuple) else [p["widths"]])]
    for w in p["widths"]:
        check_range("widths", w, 2)
        if w % p["n_heads"] or (w // p["n_heads"]) % 2:
            from harness.api import ParameterError

            raise ParameterError("widths", w, f"multiples of 2*n_heads={2 * p['n_heads']}")
    for k in ("steps", "save_every", "ld_batch_size", "n_val", "batch_size", "n_layers"):
        check_range(k, p[k], 1)
    check_range("seq_len", p["seq_len"], 2)
    check_range("lr", p["lr"], 0, low_inclusive=False)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache()
    key = hashlib.sha256(json.dumps({"recipe": RECIPE, **p}, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(out).expanduser() if out else cache / "pico_mini" / key
    marker = target / "suite.json"
    if marker.is_file() and not force:
        try:
            if json.loads(marker.read_text()).get("key") == key:
                logger.info("pico_mini: reusing %s", target)
                return target
        except (OSError, ValueError):
            pass
    with atomic_dir(target) as tmp:
        _build_into(tmp, p, cache)
        (tmp / "suite.json").write_text(json.dumps({"key": key, "recipe": RECIPE, "params": p}, indent=1))
    return target


def _data(p: dict[str, Any], cache: Path):
    from harness.data import load_corpus, split_indices, token_blocks, train_tokenizer

    corpus = load_corpus({"name": p["data"]})
    tok = train_tokenizer(corpus.texts, int(p["vocab_size"]), cache_dir=cache / "tokenizers")
    blocks = token_blocks(tok, corpus.texts, int(p["seq_len"]) + 1)  # input + next-token label
    train_idx, val_idx = split_indices(len(blocks), "train"), split_indices(len(blocks), "val")
    g = torch.Generator().manual_seed(int(p["seed"]))
    train = blocks[torch.tensor(train_idx)[torch.randperm(len(train_idx), generator=g)]]  # one fixed order
    val = blocks[torch.tensor(val_idx[: int(p["n_val"])])]
    return tok, train, val


def lr_lambda(warmup: int, total: int):
    """pico-train's ``linear_with_warmup``: linear up to ``warmup`` then linearly to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return step / max(warmup, 1)
        return max(0.0, (total - step) / max(total - warmup, 1))
    return f


def _build_into(root: Path, p: dict[str, Any], cache: Path) -> None:
    tok, train, val = _data(p, cache)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    for w in p["widths"]:
        _train_run(root / f"pico-mini-d{w}-1", int(w), p, tok, train, val)


def _training_config(w: int, p: dict[str, Any], vocab: int, run_name: str) -> dict[str, Any]:
    """pico-train's six config dataclasses (the fields this suite sets)."""
    return {
        "checkpointing": {"run_name": run_name, "save_every_n_steps": p["save_every"],
                          "learning_dynamics": {"layer_suffixes": list(ld.DEFAULT_MODULES), "sequence_idx": -1,
                                                "batch_size": p["ld_batch_size"], "eval_data": f"{p['data']}:val"}},
        "data": {"dataset": {"name": p["data"]}, "dataloader": {"batch_size": p["batch_size"]},
                 "tokenizer": {"name": "harness.data.train_tokenizer", "vocab_size": vocab}},
        "model": {"model_type": "pico_decoder", "d_model": w, "n_layers": p["n_layers"], "vocab_size": vocab,
                  "batch_size": p["batch_size"], "max_seq_len": p["seq_len"], "attention_n_heads": p["n_heads"],
                  "attention_n_kv_heads": p["n_kv_heads"], "activation_hidden_dim": 4 * w, "norm_eps": 1e-6,
                  "position_emb_theta": 10000.0},
        "training": {"fabric": {"num_nodes": 1, "num_devices": 1, "precision": "32-true", "accelerator": "cpu"},
                     "optimization": {"optimizer": "adamw", "lr": p["lr"], "lr_scheduler": "linear_with_warmup",
                                      "lr_warmup_steps": p["warmup"], "gradient_accumulation_steps": 1},
                     "max_steps": p["steps"]},
        "evaluation": {"metrics": [p["data"]]},
        "monitoring": {"logging": {"log_every_n_steps": 1}},
    }


def extract_dynamics(model, ids: torch.Tensor, sub_batch: int, prefix: str = "_forward_module.") -> dict[str, dict[str, torch.Tensor]]:
    """pico-train's ``CheckpointStateExtractor`` on one process: hooks on the stored modules of
    a copy of the decoder, last-position outputs, weights at first forward, and the gradients
    of ``sum over sub-batches of mean next-token loss``."""
    decoder = copy.deepcopy(model.pico_decoder).train()
    decoder.zero_grad(set_to_none=True)
    acts: dict[str, list[torch.Tensor]] = {}
    weights: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in decoder.named_modules():
        if any(name.endswith(s) for s in ld.DEFAULT_MODULES):
            key = prefix + name

            def hook(mod, _inp, out, key=key):
                acts.setdefault(key, []).append(out[:, -1, :].detach().clone())
                weights.setdefault(key, mod.weight.detach().clone())

            hooks.append(module.register_forward_hook(hook))
    try:
        for i in range(0, ids.shape[0], sub_batch):
            chunk = ids[i:i + sub_batch]
            logits = decoder(chunk[:, :-1])
            F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:]).backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {prefix + n.removesuffix(".weight"): prm.grad.detach().clone()
             for n, prm in decoder.named_parameters()
             if any(s in n for s in ld.DEFAULT_MODULES) and "weight" in n}
    return {"activations": {k: torch.cat(v) for k, v in acts.items()}, "weights": weights, "gradients": grads}


@torch.no_grad()
def perplexity(model, ids: torch.Tensor) -> float:
    logits = model(ids[:, :-1]).logits
    return math.exp(F.cross_entropy(logits.transpose(1, 2), ids[:, 1:]).item())


def _save_train_data(path: Path, ids: torch.Tensor, tok) -> None:
    try:
        from datasets import Dataset
    except ImportError:  # optional: pico-train writes it, readers here do not need it
        return
    Dataset.from_dict({"input_ids": ids.tolist(), "text": tok.batch_decode(ids.tolist(), skip_special_tokens=True)}
                      ).save_to_disk(str(path))


def _train_run(run: Path, w: int, p: dict[str, Any], tok, train: torch.Tensor, val: torch.Tensor) -> None:
    from harness_plugins.models.pico.modeling import PicoDecoderConfig, PicoDecoderForCausalLM

    vocab = len(tok)
    cfg = PicoDecoderConfig(d_model=w, n_layers=p["n_layers"], vocab_size=vocab, batch_size=p["batch_size"],
                            max_seq_len=p["seq_len"], attention_n_heads=p["n_heads"],
                            attention_n_kv_heads=p["n_kv_heads"], activation_hidden_dim=4 * w)
    torch.manual_seed(int(p["seed"]))  # same seed for every width (pico: seed_everything(42))
    model = PicoDecoderForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(p["warmup"]), int(p["steps"])))
    import yaml

    (run / "eval_results").mkdir(parents=True)
    (run / "logs").mkdir()
    (run / "training_config.yaml").write_text(yaml.safe_dump(_training_config(w, p, vocab, run.name)))
    B, steps, every = int(p["batch_size"]), int(p["steps"]), int(p["save_every"])
    log = []

    def batch(k: int) -> torch.Tensor:  # stream rows [k*B, (k+1)*B), wrapping around
        idx = torch.arange(k * B, (k + 1) * B) % train.shape[0]
        return train[idx]

    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            model.eval()
            step_dir = run / "checkpoints" / f"step_{step}"
            model.save_pretrained(step_dir)
            tok.save_pretrained(step_dir)
            (run / "eval_results" / f"step_{step}.json").write_text(json.dumps({p["data"]: perplexity(model, val)}))
            if step < steps:  # the batch of update step -> step+1, with the step-N weights
                nxt = batch(step)
                ld.write(run, step, "train", extract_dynamics(model, nxt, int(p["ld_batch_size"])))
                _save_train_data(ld.learning_dynamics_dir(run, step) / "train_data", nxt, tok)
            ld.write(run, step, "val", extract_dynamics(model, val, int(p["ld_batch_size"])))
            latest = run / "checkpoints" / "latest"
            latest.unlink(missing_ok=True)
            latest.symlink_to(f"step_{step}")
        if step == steps:
            break
        model.train()
        ids = batch(step)
        loss = model(ids[:, :-1], labels=None).logits
        loss = F.cross_entropy(loss.transpose(1, 2), ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.append({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0]})
    with open(run / "logs" / "log_pico_mini.log", "w") as fh:
        for row in log:
            fh.write(f"Step {row['step']} -- Loss: {row['loss']:.4f} -- LR: {row['lr']:.6g}\n")
