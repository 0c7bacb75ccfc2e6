"""The ``local_run`` family: a run (or a suite of runs) written by `harness.capture`.

    python -m harness model=local_run model.root=runs/tiny metric=loss
    python -m harness model=local_run model.root=runs/suite 'metric=[interference,deceleration,transport]'

``root`` is one captured run (``capture.json``) or a suite directory (``suite.json``, or
sub-directories that are runs): every run is one ``model_id``, its ``size`` comes from the
manifest. Only complete checkpoints are listed; a partial write (crash) is reported and ignored.
Evaluation data is the validation batch stored with the run (split ``val``), identical for
every checkpoint; ``history()`` is the per-step training-loss log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from harness.api import CheckpointRef, ModelFamily, ParameterError
from harness.params import Params, param
from harness.capture import layout as L

logger = logging.getLogger(__name__)


class LocalRunFamily(ModelFamily):
    """Runs captured with the Trainer/Lightning callbacks of `harness.capture`."""

    name: ClassVar[str] = "local_run"

    class Params(Params):
        root: str | None = param(None, "required: a captured run dir (has capture.json) or a suite dir "
                                 "(suite.json / runs inside)")
        size: list[str] | None = param(None, "keep only these sizes (size label or model_id), a string or a list; "
                                       "null = all runs")
        device: str = param("cpu", "where models run: cpu | cuda | cuda:N")
        val_batch_size: int | None = param(None, "split the stored validation batch into batches of this many "
                                           "sequences; null = one batch", ge=1, allowed=">= 1 or null")

        def check(self) -> None:
            """A root is required."""
            if not self.root:
                raise ParameterError("root", self.root, "a captured run or suite directory (model.root=PATH)")

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.root = Path(str(self.root)).expanduser()
        self.sizes = self.size
        self._runs: dict[str, dict[str, Any]] | None = None
        self._batches: dict[str, list[Any]] = {}
        self._tokenizers: dict[str, Any] = {}

    # -- runs -------------------------------------------------------------------------
    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        if self._runs is None:
            runs = L.read_suite(self.root)
            if self.sizes is not None:
                runs = [r for r in runs if r["size"] in self.sizes or r["model_id"] in self.sizes]
                if not runs:
                    raise ParameterError("size", self.sizes, f"sizes present under {self.root}")
            for r in runs:
                r["manifest"] = L.read_json(Path(r["path"]) / L.RUN_MANIFEST)
                partial = L.partial_steps(r["path"])
                if partial:
                    logger.warning("%s: partial checkpoint writes at steps %s (crashed?) are ignored",
                                   r["path"], partial)
            self._runs = {r["model_id"]: r for r in runs}
        return self._runs

    def run(self, model_id: str) -> dict[str, Any]:
        try:
            return self.runs[model_id]
        except KeyError:
            raise KeyError(f"local_run: unknown model_id {model_id!r} (have {', '.join(self.runs)})") from None

    def step_path(self, model_id: str, step: int) -> Path:
        return L.step_dir(self.run(model_id)["path"], step)

    # -- family interface --------------------------------------------------------------------
    def checkpoints(self) -> Iterator[CheckpointRef]:
        for model_id, r in self.runs.items():
            man = r["manifest"]
            for step in L.complete_steps(r["path"]):
                info = L.read_json(L.step_dir(r["path"], step) / L.STEP_META)
                yield CheckpointRef(
                    family=self.name, model_id=model_id, size=str(r["size"]), step=step,
                    tokens_seen=info.get("tokens_seen"), learning_rate=info.get("learning_rate"),
                    n_params=man.get("n_params"), meta={"path": str(L.step_dir(r["path"], step))},
                )

    def load(self, ref: CheckpointRef):
        import torch
        from transformers import AutoModelForCausalLM

        from harness_plugins.models.local_run.checkpoint import LocalRunCheckpoint

        path = self.step_path(ref.model_id, ref.step)
        if not (path / L.STEP_META).is_file():
            raise FileNotFoundError(f"incomplete or missing captured checkpoint: {path}")
        try:
            # NOTE: no trust_remote_code: only architectures transformers itself knows load
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        except Exception as e:
            raise RuntimeError(f"cannot load captured checkpoint {path}: {type(e).__name__}: {e}") from e
        batches, fingerprint = self._val(ref.model_id)
        return LocalRunCheckpoint(
            ref, model, step_dir=path, previous_dir=lambda prev: self.step_path(prev.model_id, prev.step),
            splits={"val": batches}, data_source=fingerprint, device=self.device,
            tokenizer=self._tokenizer(ref.model_id, path),
        )

    def _val(self, model_id: str) -> tuple[list[Any], str]:
        if model_id not in self._batches:
            from safetensors.torch import load_file

            r = self.run(model_id)
            ids = load_file(str(Path(r["path"]) / L.VAL_BATCH))["input_ids"]
            bs = self.val_batch_size or ids.shape[0]
            self._batches[model_id] = list(ids.split(bs))
        fp = self.run(model_id)["manifest"].get("val_batch", {}).get("fingerprint", "")
        return self._batches[model_id], f"capture:{fp}"

    def _tokenizer(self, model_id: str, path: Path) -> Any:
        if model_id not in self._tokenizers:
            tok = None
            if (path / "tokenizer.json").is_file():
                from transformers import PreTrainedTokenizerFast

                tok = PreTrainedTokenizerFast.from_pretrained(str(path))
            self._tokenizers[model_id] = tok
        return self._tokenizers[model_id]

    def history(self, model_id: str):
        """The per-update training loss: ``step`` (update number), ``loss`` (token-mean loss of that
        update's batch before it), ``learning_rate``, ``tokens_seen``."""
        import pandas as pd

        rows = L.read_loss_log(self.run(model_id)["path"])
        return pd.DataFrame(rows) if rows else None

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "runs": {m: {"size": r["size"], "path": str(r["path"])}
                                                 for m, r in self.runs.items()}}
