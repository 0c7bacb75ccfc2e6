"""Where a Pythia checkpoint's files are: the Hugging Face Hub (revision ``stepN``, only the
files needed, through the HF cache) or a local directory ``ROOT/<model_id>/step<N>/`` written
by ``save_pretrained``. Both resolve to local file paths; everything after that (model build,
streamed fields, hashing) is one code path.

    src = HubSource()
    src.weight_files("EleutherAI/pythia-70m", 1000)   # downloads model.safetensors @ step1000
    src = LocalSource("/data/pythia")
    src.model_dir("EleutherAI/pythia-70m", 1000)      # /data/pythia/EleutherAI/pythia-70m/step1000
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from harness.weights import CheckpointFileError

logger = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
#: fallback: some revisions ship only PyTorch pickles (e.g. pythia-12b, three .bin shards)
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PROBE_GRADIENTS = "probe_gradients.safetensors"
PROBE_JSON = "probe.json"
_SHA = re.compile(r"^[0-9a-f]{64}$")


def revision(step: int) -> str:
    return f"step{int(step)}"


class LocalSource:
    """Checkpoints in ``root/<model_id>/step<N>/`` (the Hub's layout, one directory per revision)."""

    kind = "local"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()

    def model_dir(self, model_id: str, step: int) -> Path:
        d = self.root / model_id / revision(step)
        if not (d / CONFIG).is_file():
            what = "directory is missing" if not d.is_dir() else f"no {CONFIG} in it"
            raise CheckpointFileError(f"{d}: revision {revision(step)} of {model_id} is missing ({what})")
        return d

    def weight_files(self, model_id: str, step: int) -> list[Path]:
        d = self.root / model_id / revision(step)
        return _weights_in(d, model_id, step)

    def optional_file(self, model_id: str, step: int, name: str) -> Path | None:
        p = self.root / model_id / revision(step) / name
        return p if p.is_file() else None

    def list_models(self) -> dict[str, list[int]]:
        """model_id -> steps found (directories ``step<N>`` holding a config.json)."""
        if not self.root.is_dir():
            raise CheckpointFileError(f"{self.root}: model.root is not a directory")
        found: dict[str, list[int]] = {}
        for cfg in sorted(self.root.glob("**/step*/" + CONFIG)):
            step_dir = cfg.parent
            m = re.fullmatch(r"step(\d+)", step_dir.name)
            if not m:
                continue
            model_id = step_dir.parent.relative_to(self.root).as_posix()
            found.setdefault(model_id, []).append(int(m[1]))
        return {k: sorted(v) for k, v in found.items()}

    def weights_sha(self, files: list[Path]) -> str | None:
        return None  # computed from content by the caller


def _weights_in(d: Path, model_id: str, step: int) -> list[Path]:
    if (d / WEIGHTS).is_file():
        return [d / WEIGHTS]
    if (d / WEIGHTS_INDEX).is_file():
        return _shards(d / WEIGHTS_INDEX)
    if (d / BIN_WEIGHTS).is_file():
        return [d / BIN_WEIGHTS]
    if (d / BIN_INDEX).is_file():
        return _shards(d / BIN_INDEX)
    if not d.is_dir():
        raise CheckpointFileError(f"{d}: revision {revision(step)} of {model_id} is missing")
    raise CheckpointFileError(f"{d}: no weights ({WEIGHTS}, {WEIGHTS_INDEX}, {BIN_WEIGHTS} or {BIN_INDEX})")


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointFileError(f"{index}: unreadable shard index ({e})") from None
    return [index.parent / f for f in sorted(set(weight_map.values()))]


class HubSource:
    """EleutherAI's Hub repos; revision ``stepN`` is a branch. Uses the HF cache (``cache_dir``
    or ``HF_HOME``); with ``HF_HUB_OFFLINE=1`` only cached files are used, and a missing one
    raises at once with a message saying so."""

    kind = "hub"

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None):
        self.cache_dir = str(cache_dir) if cache_dir else None

    def _get(self, model_id: str, step: int, filename: str, *, required: bool = True) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        rev = revision(step)
        try:
            return Path(hf_hub_download(model_id, filename, revision=rev, cache_dir=self.cache_dir))
        except RevisionNotFoundError:
            raise CheckpointFileError(f"{model_id}@{rev}: revision {rev} does not exist on the Hub") from None
        except RepositoryNotFoundError:
            raise CheckpointFileError(f"{model_id}: no such repository on the Hub (or it is gated)") from None
        # NOTE: LocalEntryNotFoundError subclasses EntryNotFoundError: catch it first
        except LocalEntryNotFoundError:
            offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
            why = "HF_HUB_OFFLINE=1" if offline else "the Hub is unreachable"
            if not required:
                return None
            raise CheckpointFileError(
                f"{model_id}@{rev}: {filename} is not in the Hugging Face cache and {why}; "
                "download it while online, or use model.source=local") from None
        except EntryNotFoundError:
            if required:
                raise CheckpointFileError(f"{model_id}@{rev}: file {filename} does not exist in this revision") from None
            return None

    def model_dir(self, model_id: str, step: int) -> Path:
        cfg = self._get(model_id, step, CONFIG)
        for name in TOKENIZER_FILES:
            self._get(model_id, step, name, required=False)
        return cfg.parent  # the snapshot directory of this revision's commit

    def weight_files(self, model_id: str, step: int) -> list[Path]:
        p = self._get(model_id, step, WEIGHTS, required=False)
        if p is not None:
            return [p]
        index = self._get(model_id, step, WEIGHTS_INDEX, required=False)
        if index is None:
            p = self._get(model_id, step, BIN_WEIGHTS, required=False)
            if p is not None:
                return [p]
            index = self._get(model_id, step, BIN_INDEX, required=False)
        if index is None:
            raise CheckpointFileError(
                f"{model_id}@{revision(step)}: no weights ({WEIGHTS}, {WEIGHTS_INDEX}, {BIN_WEIGHTS}, {BIN_INDEX}) "
                "available (not on the Hub for this revision, or not cached while offline)")
        files = _shards(index)
        for f in files:
            self._get(model_id, step, f.name)
        return files

    def optional_file(self, model_id: str, step: int, name: str) -> Path | None:
        return None  # public Pythia ships no probe gradients

    def weights_sha(self, files: list[Path]) -> str | None:
        """The Hub's LFS sha256: the HF cache names each blob by it (no re-hashing)."""
        shas = [Path(os.path.realpath(f)).name for f in files]
        if not all(_SHA.match(s) for s in shas):
            return None
        return shas[0] if len(shas) == 1 else _combine(shas)


def _combine(shas: list[str]) -> str:
    import hashlib

    return hashlib.sha256("".join(shas).encode()).hexdigest()
