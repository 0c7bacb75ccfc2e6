"""Which tensors a field yields: module kinds, glob patterns, and the value slice of GPT-NeoX's
fused ``query_key_value``.

Pico stores learning-dynamics data for three linear modules per layer: ``attention.v_proj``,
``attention.o_proj`` and ``swiglu.w_2``. The Pythia (GPT-NeoX) analogue, the default kind
``pico``, is per layer::

    gpt_neox.layers.{i}.attention.value.weight        (virtual: value rows of query_key_value)
    gpt_neox.layers.{i}.attention.dense.weight        (attention output projection, = o_proj)
    gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight      (MLP down projection, = w_2)

Other kinds: ``matrices`` (every 2-D tensor, embeddings and unembedding included) and ``all``.
Anything else is a list of glob patterns matched against the real tensor names (as stored in
the checkpoint's safetensors, e.g. ``embed_out.weight``) and the virtual value names.

GPT-NeoX lays the fused projection out per head: output rows are ``[head 0: q, k, v | head 1:
q, k, v | ...]``, each ``head_dim`` rows (HF ``GPTNeoXAttention`` views the output as
``(..., n_heads, 3 * head_dim)`` and chunks the last axis in three). The value slice is
therefore ``W.view(n_heads, 3, head_dim, d)[:, 2].reshape(d, d)``; tests check it by zeroing
exactly those rows, which makes the attention output constant.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

KINDS = ("pico", "matrices", "all")
_LAYER = re.compile(r"^(?P<prefix>.*layers\.\d+\.attention\.)query_key_value\.weight$")
_PICO_SUFFIXES = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
VALUE_NAME = "value.weight"


@dataclass(frozen=True)
class Pick:
    """One yielded tensor: its name, the stored tensor it comes from, and a slicer."""

    name: str
    source: str
    slicer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.slicer is None else self.slicer(t)


def value_rows(n_heads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def slicer(w: torch.Tensor) -> torch.Tensor:
        three_d, d = w.shape
        head_dim = three_d // (3 * n_heads)
        return w.view(n_heads, 3, head_dim, d)[:, 2].reshape(n_heads * head_dim, d)

    return slicer


def plan(shapes: dict[str, tuple[int, ...]], modules: Sequence[str] | str | None, n_heads: int,
         default: str = "pico") -> list[Pick]:
    """The tensors to yield, in stored order, for ``modules`` (None = ``default`` kind)."""
    if modules is None:
        modules = default
    if isinstance(modules, str):
        modules = [modules]
    modules = list(modules)
    virtual = {}
    for name in shapes:
        m = _LAYER.match(name)
        if m:
            virtual[name] = Pick(m["prefix"] + VALUE_NAME, name, value_rows(n_heads))
    picks: list[Pick] = []
    seen: set[str] = set()

    def add(p: Pick) -> None:
        if p.name not in seen:
            seen.add(p.name)
            picks.append(p)

    for name, shape in shapes.items():
        for pat in modules:
            if pat == "all" or (pat == "matrices" and len(shape) == 2):
                add(Pick(name, name))
            elif pat == "pico":
                if name in virtual:
                    add(virtual[name])
                elif name.endswith(_PICO_SUFFIXES) and ".layers." in name:
                    add(Pick(name, name))
            elif pat not in KINDS:
                if fnmatch.fnmatchcase(name, pat):
                    add(Pick(name, name))
                if name in virtual and fnmatch.fnmatchcase(virtual[name].name, pat):
                    add(virtual[name])
    return picks
