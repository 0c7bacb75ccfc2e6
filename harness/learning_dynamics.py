"""Reader and writer of pico-train's learning-dynamics files (family-agnostic).

pico-train stores, at each checkpoint step, under ``checkpoints/step_<N>/learning_dynamics/``::

    {split}_{kind}.pt        split: train | val     kind: activations | weights | gradients

each a ``torch.save``d ``dict[module_name, Tensor]`` for a few linear modules per layer
(``attention.v_proj``, ``attention.o_proj``, ``swiglu.w_2``): activations ``[N, out]`` are the
module output at the last token of each sequence, weights and gradients ``[out, in]``. Module
names carry whatever wrapper prefix the trainer had (``_forward_module.layers.3.attention.v_proj``);
this module keys them by ``(layer, module)`` instead. A split with no data has no files
(pico-train's last step stores only ``val``).

Reading::

    step = StepDynamics(run / "checkpoints/step_1000/learning_dynamics")
    step.get("val", "gradients")[(3, "attention.v_proj")]   # float32, read from disk once

Writing (a trainer callback, the pico_mini builder)::

    write(run_dir, 1000, "train", {"activations": acts, "weights": ws, "gradients": grads})

Gradient scale: pico-train sums the gradients of the *mean* loss over its extraction
sub-batches without dividing, so the stored tensor is ``iterations x`` a mean gradient.
`gradient_iterations` gives that count; `StepDynamics` divides by it when told the
sub-batch size (``normalise_gradients``), making gradients comparable across splits and sizes.

Safety: files load with ``torch.load(weights_only=True)`` and must hold a flat
``dict[str, Tensor]``; anything else, a missing or a truncated file raises
`LearningDynamicsError` naming the file. Torch is imported inside functions only.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api import FieldUnavailable, HarnessError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODULES",
    "KINDS",
    "LD_DIRNAME",
    "SPLITS",
    "LearningDynamicsError",
    "NotStoredError",
    "StepDynamics",
    "canonical_name",
    "file_path",
    "gradient_iterations",
    "learning_dynamics_dir",
    "load_file",
    "parse_key",
    "write",
    "write_split",
]

SPLITS = ("train", "val")
KINDS = ("activations", "weights", "gradients")
LD_DIRNAME = "learning_dynamics"
#: pico-train's ``LearningDynamicsCheckpointingConfig.layer_suffixes``
DEFAULT_MODULES = ("attention.v_proj", "attention.o_proj", "swiglu.w_2")

_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+?)(?:\.weight)?$")


class LearningDynamicsError(HarnessError):
    """A learning-dynamics file is missing, truncated or holds something other than tensors."""


class NotStoredError(LearningDynamicsError, FieldUnavailable):
    """The requested split/kind was not stored at this step (e.g. ``train`` at the last step).

    A `FieldUnavailable`: a metric that needs it gets a ``skipped`` record with this reason.
    """


# ---- names and paths -------------------------------------------------------------------


def parse_key(key: str) -> tuple[int, str]:
    """``'_forward_module.layers.3.attention.v_proj'`` -> ``(3, 'attention.v_proj')``."""
    m = _KEY.search(key)
    if not m:
        raise LearningDynamicsError(f"key {key!r} names no layer (expected '...layers.<i>.<module>')")
    return int(m.group(1)), m.group(2)


def canonical_name(layer: int, module: str) -> str:
    """The prefix-free tensor name used by checkpoint fields: ``layers.3.attention.v_proj``."""
    return f"layers.{layer}.{module}"


def file_path(directory: str | os.PathLike[str], split: str, kind: str) -> Path:
    """``<directory>/<split>_<kind>.pt`` after checking split and kind."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: allowed {', '.join(SPLITS)}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: allowed {', '.join(KINDS)}")
    return Path(directory) / f"{split}_{kind}.pt"


def learning_dynamics_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``<run_dir>/checkpoints/step_<step>/learning_dynamics`` (pico-train's layout)."""
    return Path(run_dir) / "checkpoints" / f"step_{int(step)}" / LD_DIRNAME


def gradient_iterations(n_examples: int, batch_size: int, world_size: int = 1) -> int:
    """How many sub-batch gradients pico-train summed into one stored gradient.

    pico-train's extractor uses a DataLoader of ``batch_size // world_size`` per rank over a
    DistributedSampler (which pads the dataset to a multiple of ``world_size``), calls
    ``backward`` on each sub-batch's mean loss and never divides; ranks are averaged.
    """
    if n_examples <= 0 or batch_size <= 0 or world_size <= 0:
        raise ValueError(f"need positive n_examples, batch_size, world_size; got {n_examples}, {batch_size}, {world_size}")
    per_rank = max(batch_size // world_size, 1)
    return math.ceil(math.ceil(n_examples / world_size) / per_rank)


# ---- reading ---------------------------------------------------------------------------


def load_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load one ``.pt`` file safely: ``weights_only=True`` and a flat ``dict[str, Tensor]``."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise LearningDynamicsError(f"learning-dynamics file missing: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LearningDynamicsError(
            f"{path}: refused to load (holds objects other than tensors; weights_only=True): {e}"
        ) from None
    except Exception as e:  # zip/pickle errors of a truncated or corrupt file vary by cause
        raise LearningDynamicsError(f"{path}: unreadable or truncated torch file: {e}") from None
    if not isinstance(obj, Mapping):
        raise LearningDynamicsError(f"{path}: expected dict[str, Tensor], found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise LearningDynamicsError(
                f"{path}: expected dict[str, Tensor], found entry {key!r}: {type(value).__name__}"
            )
    return dict(obj)


class StepDynamics:
    """One step's learning-dynamics directory, each file read at most once (``reads`` counts).

    ``get(split, kind)`` returns ``{(layer, module): float32 tensor}``. With
    ``normalise_gradients=True`` and the extraction sub-batch size known (``batch_size``,
    ``world_size``), gradients are divided by `gradient_iterations` (the number of rows of that
    split's activations being the number of examples), giving the mean-loss gradient.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        step: int | None = None,
        batch_size: Mapping[str, int] | int | None = None,
        world_size: int = 1,
        normalise_gradients: bool = True,
    ):
        self.directory = Path(directory)
        self.step = step
        self.batch_size = batch_size
        self.world_size = world_size
        self.normalise_gradients = normalise_gradients
        self.reads: Counter[tuple[str, str]] = Counter()
        self._cache: dict[tuple[str, str], dict[tuple[int, str], torch.Tensor]] = {}

    def _where(self) -> str:
        return f"step {self.step}" if self.step is not None else str(self.directory)

    def has(self, split: str, kind: str) -> bool:
        """Whether this step stored ``split``/``kind`` (read or on disk)."""
        return (split, kind) in self._cache or file_path(self.directory, split, kind).is_file()

    def available(self) -> list[tuple[str, str]]:
        """The (split, kind) pairs stored at this step."""
        return [(s, k) for s in SPLITS for k in KINDS if self.has(s, k)]

    def _read(self, split: str, kind: str) -> dict[tuple[int, str], torch.Tensor]:
        path = file_path(self.directory, split, kind)
        if not path.is_file():
            if not any(file_path(self.directory, split, k).is_file() for k in KINDS):
                raise NotStoredError(f"{split} learning dynamics not stored at {self._where()} ({self.directory})")
            raise LearningDynamicsError(f"learning-dynamics file missing: {path}")
        self.reads[(split, kind)] += 1
        raw = load_file(path)
        out: dict[tuple[int, str], torch.Tensor] = {}
        for key, tensor in raw.items():
            ident = parse_key(key)
            if ident in out:
                raise LearningDynamicsError(f"{path}: two keys map to layer {ident[0]} module {ident[1]!r}")
            out[ident] = tensor.float()
        return out

    def iterations(self, split: str) -> int | None:
        """Sub-batch count behind this split's stored gradients, when the batch size is known."""
        bs = self.batch_size.get(split) if isinstance(self.batch_size, Mapping) else self.batch_size
        if not bs:
            return None
        acts = self.get(split, "activations")
        if not acts:
            return None
        return gradient_iterations(next(iter(acts.values())).shape[0], int(bs), self.world_size)

    def get(self, split: str, kind: str) -> dict[tuple[int, str], torch.Tensor]:
        """``{(layer, module): tensor}`` for one file, float32, gradients normalised when asked."""
        key = (split, kind)
        if key not in self._cache:
            data = self._read(split, kind)
            if kind == "gradients" and self.normalise_gradients:
                it = self.iterations(split)
                if it is None:
                    logger.debug("%s: gradient scale left as stored (sub-batch size unknown)", self._where())
                elif it != 1:
                    data = {k: v / it for k, v in data.items()}
            self._cache[key] = data
        return self._cache[key]

    def clear(self) -> None:
        """Drop the tensors read so far."""
        self._cache.clear()


# ---- writing ---------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    from harness.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_split(
    directory: str | os.PathLike[str], split: str, data: Mapping[str, Mapping[str, torch.Tensor]]
) -> list[Path]:
    """Write ``{kind: {module_name: tensor}}`` of one split into a learning-dynamics directory.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    Empty kinds are not written (as pico-train). Tensors are stored detached, on CPU, contiguous.
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: allowed {', '.join(SPLITS)}")
    directory = Path(directory)
    unknown = set(data) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown learning-dynamics kinds {sorted(unknown)}; allowed {', '.join(KINDS)}")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        tensors = data.get(kind) or {}
        if not tensors:
            continue
        clean = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{split}_{kind}[{name!r}] is a {type(t).__name__}, not a tensor")
            parse_key(name)  # every key must name its layer
            clean[str(name)] = t.detach().cpu().contiguous()
        path = file_path(directory, split, kind)
        _atomic_save(clean, path)
        written.append(path)
    return written


def write(
    run_dir: str | os.PathLike[str], step: int, split: str, data: Mapping[str, Mapping[str, torch.Tensor]]
) -> list[Path]:
    """Write one split of one step into a pico-train run directory; returns the files written."""
    return write_split(learning_dynamics_dir(run_dir, step), split, data)
