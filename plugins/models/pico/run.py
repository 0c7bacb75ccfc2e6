"""One Pico training run, read from a pico-train run directory or from the Hub, behind one
interface (`PicoRun`): the family and checkpoints never care where the files came from.

Local layout (pico-train)::

    <run>/training_config.yaml
    <run>/eval_results/step_<N>.json               {"paloma": <perplexity>}
    <run>/checkpoints/step_<N>/config.json, model.safetensors, tokenizer.json, ...
    <run>/checkpoints/step_<N>/learning_dynamics/{train,val}_{activations,weights,gradients}.pt

The Hub source (`harness_plugins.models.pico.hub.HubRun`) downloads exactly these files for one
step into the Hugging Face cache and then answers with the same paths.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
_EVAL_FILE = re.compile(r"^step_(\d+)\.json$")

#: pico-train's defaults (src/config/*), used when a run has no training_config.yaml
PICO_DEFAULTS: dict[str, Any] = {
    "data": {"dataloader": {"batch_size": 1024}},
    "model": {"max_seq_len": 2048},
    "training": {
        "max_steps": 200_000,
        "fabric": {"num_nodes": 1, "num_devices": 1},
        "optimization": {"lr": 3e-4, "lr_scheduler": "linear_with_warmup", "lr_warmup_steps": 2500},
    },
    "checkpointing": {"learning_dynamics": {"batch_size": 8}},
}


def deep_get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def merged_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cfg`` over `PICO_DEFAULTS` (nested)."""

    def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
        return out

    return merge(PICO_DEFAULTS, cfg or {})


def learning_rate(step: int, cfg: Mapping[str, Any]) -> float | None:
    """LR used for the update after ``step`` under pico-train's schedule (linear warmup, then
    linear decay to 0 at ``max_steps``); None for an unknown scheduler."""
    opt = deep_get(cfg, "training.optimization", {})
    lr, warm, total = float(opt.get("lr", 0)), int(opt.get("lr_warmup_steps", 0)), int(deep_get(cfg, "training.max_steps", 0))
    if opt.get("lr_scheduler", "linear_with_warmup") != "linear_with_warmup" or total <= 0:
        return None
    if step < warm:
        return lr * step / max(warm, 1)
    return lr * max(0.0, (total - step) / max(total - warm, 1))


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RuntimeError(f"{path}: unreadable training config: {e}") from None
    if not isinstance(data, dict):
        raise RuntimeError(f"{path}: expected a mapping, found {type(data).__name__}")
    return data


def read_eval(path: Path) -> dict[str, float]:
    """One ``eval_results/step_<N>.json``: ``{task: perplexity}``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no evaluation results: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{path}: unreadable evaluation results: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise RuntimeError(f"{path}: expected {{task: number}}, found {str(data)[:80]}")
    return {str(k): float(v) for k, v in data.items()}


class PicoRun:
    """A pico-train run directory (also the base of the Hub source)."""

    def __init__(self, root: str | Path, *, size: str | None = None, run_name: str | None = None):
        self.root = Path(root).expanduser()
        self.run_name = run_name or self.root.name
        self._config: dict[str, Any] | None = None
        self._size = size

    # -- facts ------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """training_config.yaml merged over pico-train's defaults."""
        if self._config is None:
            path = self.root / "training_config.yaml"
            self._config = merged_config(read_yaml(path) if path.is_file() else None)
        return self._config

    @property
    def size(self) -> str:
        if self._size is None:
            d = deep_get(self.config, "model.d_model")
            self._size = f"d{d}" if d else self.run_name
        return self._size

    def tokens_per_step(self) -> int:
        return int(deep_get(self.config, "data.dataloader.batch_size")) * int(deep_get(self.config, "model.max_seq_len"))

    def ld_batch_size(self) -> int:
        return int(deep_get(self.config, "checkpointing.learning_dynamics.batch_size"))

    def world_size(self) -> int:
        f = deep_get(self.config, "training.fabric", {})
        return int(f.get("num_nodes", 1)) * int(f.get("num_devices", 1))

    # -- files ------------------------------------------------------------------------
    def steps(self) -> list[int]:
        ckpts = self.root / "checkpoints"
        if not ckpts.is_dir():
            raise FileNotFoundError(f"not a pico-train run directory (no checkpoints/): {self.root}")
        found = []
        for p in ckpts.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                found.append(int(m.group(1)))
        return sorted(found)

    def step_dir(self, step: int) -> Path:
        """The HF model folder of ``step`` (files are checked by the loader)."""
        path = self.root / "checkpoints" / f"step_{int(step)}"
        if not path.is_dir():
            raise FileNotFoundError(f"no checkpoint directory for step {step}: {path}")
        return path

    def dynamics_dir(self, step: int, split: str | None = None) -> Path:
        return self.root / "checkpoints" / f"step_{int(step)}" / "learning_dynamics"

    def eval_results(self, step: int) -> dict[str, float]:
        return read_eval(self.root / "eval_results" / f"step_{int(step)}.json")

    def describe(self) -> dict[str, Any]:
        return {"source": "local", "root": str(self.root), "run_name": self.run_name}


def find_runs(root: str | Path) -> list[Path]:
    """``root`` itself when it is a run directory, else its sub-directories that are runs."""
    root = Path(root).expanduser()
    if (root / "checkpoints").is_dir():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"pico run directory not found: {root}")
    runs = sorted(p for p in root.iterdir() if (p / "checkpoints").is_dir())
    if not runs:
        raise FileNotFoundError(f"{root}: neither a pico-train run (checkpoints/) nor a folder of runs")
    return runs


def n_params(config: Mapping[str, Any]) -> int:
    """Parameters of a pico-decoder with this config.json (untied embeddings, no biases)."""
    d, v, L = int(config["d_model"]), int(config["vocab_size"]), int(config["n_layers"])
    h, kv, f = int(config["attention_n_heads"]), int(config.get("attention_n_kv_heads") or config["attention_n_heads"]), int(config["activation_hidden_dim"])
    hd = d // h
    per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f + 2 * d
    return 2 * v * d + L * per_layer + d


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
