"""The one streaming weight reader: safetensors checkpoints read one tensor at a time, and
deltas of two checkpoints with peak memory near ONE full tensor. Every family that stores
weights in safetensors (pythia, pico, local_run) reads them through `WeightFiles`; a family
whose checkpoints live in memory (toy_softmax) wraps them in `TensorWeights`; the shared
``delta`` field (`harness.delta`) runs `stream_deltas` over either.

    weights = WeightFiles.open(["ckpt_b/model.safetensors"])      # header only
    for name, d in stream_deltas(WeightFiles.open([b]), WeightFiles.open([a])):
        print(name, d.pow(2).mean().sqrt())                        # RMS of b - a

NOTE: hand-written on purpose. `safetensors.safe_open` memory-maps the whole file, and the
mapped pages it touches count in the process RSS until the file is closed: streaming a
160M-parameter pair through it peaked at 1.5 GB (issue 3). Here each tensor is read with
``readinto`` into a fresh buffer, and the previous checkpoint's tensor is subtracted in chunks
into the current one, so the peak is one tensor plus a small chunk buffer. The file format is
tiny (8-byte little-endian header length, JSON header, raw little-endian data) and every header
is validated against the file size first, so a truncated or corrupt file gives a clear error.

Imports torch: plugins import this module, never ``import harness``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
#: largest header safetensors itself accepts (100 MB)
MAX_HEADER = 100_000_000
#: elements of the previous tensor subtracted per chunk (4 MB of fp32): the chunk buffer adds to
#: the peak (one tensor + one chunk); 16 MB chunks measured no faster (bench/bench_pythia.py)
CHUNK_ELEMS = 1024 * 1024


class CheckpointFileError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, or inconsistent with its partner."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a weight file: where its bytes are, its dtype and shape."""
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


def read_header(path: str | os.PathLike[str]) -> dict[str, TensorEntry]:
    """Parse and validate one safetensors header (no tensor data is read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointFileError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            n = int.from_bytes(raw, "little")
            if n <= 0 or n > MAX_HEADER or 8 + n > size:
                raise CheckpointFileError(
                    f"{path}: corrupt or truncated safetensors file (header length {n}, file size {size})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointFileError(f"{path}: checkpoint file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFileError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    base = 8 + n
    out: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            lo, hi = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointFileError(f"{path}: corrupt header entry for tensor {name!r} ({e!r})") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if hi - lo != math.prod(shape) * itemsize or lo < 0:
            raise CheckpointFileError(f"{path}: tensor {name!r} has inconsistent offsets {lo}..{hi} for shape {shape}")
        if base + hi > size:
            raise CheckpointFileError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at byte {base + hi}, file has {size}")
        out[name] = TensorEntry(name, path, dtype, shape, base + lo, hi - lo)
    return out


class WeightFiles:
    """The tensors of one checkpoint (one or several safetensors shards), by name."""

    def __init__(self, entries: dict[str, TensorEntry], files: Sequence[Path]):
        self.entries = entries
        self.files = list(files)

    @classmethod
    def open(cls, files: Sequence[str | os.PathLike[str]]) -> WeightFiles:
        """Index the tensors of safetensors (or PyTorch ``.bin``) files by reading their headers only."""
        paths = [Path(f) for f in files]
        if paths and all(p.suffix == ".bin" for p in paths):
            return TorchBinWeights.open(paths)
        entries: dict[str, TensorEntry] = {}
        for p in paths:
            for name, e in read_header(p).items():
                if name in entries:
                    raise CheckpointFileError(f"{p}: tensor {name!r} also in {entries[name].file}")
                entries[name] = e
        return cls(entries, paths)

    def names(self) -> list[str]:
        """The tensor names."""
        return list(self.entries)

    def n_params(self) -> int:
        """The total number of elements of every tensor."""
        return sum(e.numel for e in self.entries.values())

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, read into a fresh buffer (optionally converted to ``dtype``)."""
        e = self.entries[name]
        buf = torch.empty(e.nbytes, dtype=torch.uint8)
        with open(e.file, "rb") as f:
            _read_exact(f, e.start, buf, e.file, name)
        t = buf.view(e.dtype).reshape(e.shape)
        return t.to(dtype) if dtype is not None and dtype != e.dtype else t

    def delta(self, name: str, previous: WeightFiles, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``this tensor - previous's`` in ``dtype``, in a fresh tensor (the caller owns it).

        Between two safetensors files this is ONE pass: each window of both files is memory
        mapped and ``torch.sub(..., out=)`` writes the difference straight into the result, so
        neither file's bytes are first copied into a buffer. NOTE: measured against reading the
        current tensor with ``readinto`` and subtracting the previous one into it (two passes
        over the result) in bench/bench_pythia.py (issue 18). Other readers (or a file that
        cannot be mapped): `read` + `subtract_into`.
        """
        e, p = self.entries[name], previous.entries.get(name)
        if type(previous) is WeightFiles and type(self) is WeightFiles and p is not None and p.shape == e.shape:
            try:
                return self._delta_mapped(e, p, dtype)
            except (OSError, ValueError, BufferError, RuntimeError):
                pass
        out = self.read(name, dtype)
        previous.subtract_into(name, out)
        return out

    def _delta_mapped(self, e: TensorEntry, p: TensorEntry, dtype: torch.dtype) -> torch.Tensor:
        import warnings

        out = torch.empty(e.shape, dtype=dtype)
        flat = out.view(-1)
        with open(e.file, "rb") as fc, open(p.file, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # frombuffer: "buffer is not writable" (we only read)
            for lo in range(0, e.numel, CHUNK_ELEMS):
                hi = min(e.numel, lo + CHUNK_ELEMS)
                with _window(fc, e, lo, hi) as a, _window(fp, p, lo, hi) as b:
                    if a.dtype == dtype and b.dtype == dtype:
                        torch.sub(a, b, out=flat[lo:hi])
                    else:  # subtract in ``dtype``: float(a) - float(b), not a rounded fp16 difference
                        flat[lo:hi].copy_(a).sub_(b)
        return out

    def subtract_into(self, name: str, out: torch.Tensor) -> None:
        """``out -= this tensor``, `CHUNK_ELEMS` elements at a time.

        Each chunk is subtracted straight from a read-only memory map of just that window of the
        file (mapped, used, unmapped), so the previous checkpoint's bytes are never copied into a
        buffer and at most one window counts in RSS. NOTE: measured 1.5-2x faster than
        ``readinto`` a chunk buffer then subtracting (bench/bench_pythia.py, issue 18); falls back
        to ``readinto`` where the file cannot be mapped.
        """
        e = self.entries[name]
        try:
            self._subtract_mapped(e, out)
        except (OSError, ValueError, BufferError, RuntimeError):
            self._subtract_read(e, out)

    def _subtract_mapped(self, e: TensorEntry, out: torch.Tensor) -> None:
        import warnings

        flat = out.view(-1)
        with open(e.file, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # frombuffer: "buffer is not writable" (we only read)
            for lo in range(0, e.numel, CHUNK_ELEMS):
                hi = min(e.numel, lo + CHUNK_ELEMS)
                with _window(f, e, lo, hi) as part:
                    flat[lo:hi] -= part if part.dtype == out.dtype else part.to(out.dtype)

    def _subtract_read(self, e: TensorEntry, out: torch.Tensor) -> None:
        flat = out.view(-1)
        itemsize = torch.empty((), dtype=e.dtype).element_size()
        chunk = torch.empty(min(e.numel, CHUNK_ELEMS) * itemsize, dtype=torch.uint8)
        with open(e.file, "rb") as f:
            for lo in range(0, e.numel, CHUNK_ELEMS):
                hi = min(e.numel, lo + CHUNK_ELEMS)
                part = chunk[: (hi - lo) * itemsize]
                _read_exact(f, e.start + lo * itemsize, part, e.file, e.name)
                flat[lo:hi] -= part.view(e.dtype).to(out.dtype)

    def sha256(self) -> str:
        """Content hash over all shard files, in order (integrity; identical-weight detection)."""
        h = hashlib.sha256()
        for p in self.files:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(16 * 1024 * 1024), b""):
                    h.update(block)
        return h.hexdigest()


class TorchBinWeights(WeightFiles):
    """Fallback for revisions that only ship ``pytorch_model*.bin`` (e.g. the pythia-12b shards):
    ``torch.load(mmap=True, weights_only=True)``, same interface. The pages it touches count in
    RSS while the files are mapped (like ``safe_open``), so peak memory is higher than for
    safetensors."""

    def __init__(self, entries: dict[str, TensorEntry], files: Sequence[Path], tensors: dict[str, torch.Tensor]):
        super().__init__(entries, files)
        self._tensors = tensors

    @classmethod
    def open(cls, files: Sequence[str | os.PathLike[str]]) -> TorchBinWeights:
        """Index the tensors of PyTorch ``.bin`` state dicts (memory-mapped, ``weights_only``)."""
        entries: dict[str, TensorEntry] = {}
        tensors: dict[str, torch.Tensor] = {}
        paths = [Path(f) for f in files]
        for p in paths:
            if not p.is_file():
                raise CheckpointFileError(f"{p}: checkpoint file is missing")
            try:
                sd = torch.load(p, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # zip/pickle errors of a truncated or corrupt file
                raise CheckpointFileError(f"{p}: corrupt or truncated PyTorch checkpoint ({e})") from None
            if not isinstance(sd, dict):
                raise CheckpointFileError(f"{p}: not a state dict")
            for name, t in sd.items():
                if not isinstance(t, torch.Tensor):
                    continue
                if name in entries:
                    raise CheckpointFileError(f"{p}: tensor {name!r} also in {entries[name].file}")
                entries[name] = TensorEntry(name, p, t.dtype, tuple(t.shape), -1, t.numel() * t.element_size())
                tensors[name] = t
        return cls(entries, paths, tensors)

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor as a private copy (optionally converted to ``dtype``)."""
        t = self._tensors[name]
        return t.to(dtype or t.dtype, copy=True)  # a private copy, never the mapped file

    def subtract_into(self, name: str, out: torch.Tensor) -> None:
        """``out -= tensor name``, in chunks."""
        flat, src = out.view(-1), self._tensors[name].reshape(-1)
        for lo in range(0, src.numel(), CHUNK_ELEMS):
            flat[lo:lo + CHUNK_ELEMS] -= src[lo:lo + CHUNK_ELEMS].to(out.dtype)


class TensorWeights(WeightFiles):
    """The same interface over tensors already in memory (a family that keeps its checkpoints
    as tensors, e.g. toy_softmax's trajectory): ``read`` returns a private copy."""

    def __init__(self, tensors: dict[str, torch.Tensor], label: str = "<memory>"):
        path = Path(label)
        entries = {n: TensorEntry(n, path, t.dtype, tuple(t.shape), -1, t.numel() * t.element_size())
                   for n, t in tensors.items()}
        super().__init__(entries, [path])
        self._tensors = dict(tensors)

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor as a private copy (optionally converted to ``dtype``)."""
        t = self._tensors[name].detach()
        return t.to(dtype or t.dtype, copy=True)

    def subtract_into(self, name: str, out: torch.Tensor) -> None:
        """``out -= tensor name``, in chunks."""
        out.sub_(self._tensors[name].detach().reshape(out.shape).to(out.dtype))

    def sha256(self) -> str:
        """A hash of every tensor's name and bytes."""
        h = hashlib.sha256()
        for n in sorted(self._tensors):
            h.update(n.encode())
            h.update(self._tensors[n].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


@contextlib.contextmanager
def _window(f, e: TensorEntry, lo: int, hi: int) -> Iterator[torch.Tensor]:
    """Elements ``lo:hi`` of tensor ``e`` as a tensor over a read-only map of just those bytes;
    unmapped on exit (so at most this window's pages count in RSS)."""
    import mmap

    itemsize = torch.empty((), dtype=e.dtype).element_size()
    start = e.start + lo * itemsize
    base = start - start % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(f.fileno(), (hi - lo) * itemsize + start - base,
                   flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ, offset=base)
    try:
        part = torch.frombuffer(mm, dtype=e.dtype, count=hi - lo, offset=start - base)
        yield part
        del part
    finally:
        mm.close()


def _read_exact(f, offset: int, out: torch.Tensor, path: Path, name: str) -> None:
    f.seek(offset)
    view = memoryview(out.numpy()).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise CheckpointFileError(f"{path}: truncated while reading tensor {name!r}")
        got += n


def stream_deltas(current: WeightFiles, previous: WeightFiles, names: Sequence[str] | None = None,
                  dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, current - previous)`` in ``dtype``, one tensor at a time, in file order.

    Raises `CheckpointFileError` naming both files when a tensor is missing on one side or its
    shape changed between the checkpoints.
    """
    names = current.names() if names is None else list(names)
    # file order: sequential reads (the header lists names alphabetically, not by offset)
    names = _spread_large(sorted(names, key=lambda n: (str(current.entries[n].file), current.entries[n].start)
                                 if n in current.entries else ("", 0)), current)
    for i, name in enumerate(names):
        if name not in current.entries:
            raise CheckpointFileError(f"tensor {name!r} is not in {', '.join(map(str, current.files))}")
        if name not in previous.entries:
            raise CheckpointFileError(
                f"tensor {name!r} is in {current.entries[name].file} but not in {', '.join(map(str, previous.files))}")
        a, b = current.entries[name], previous.entries[name]
        if a.shape != b.shape:
            raise CheckpointFileError(
                f"shape of {name!r} changed between checkpoints: {b.shape} in {b.file} vs {a.shape} in {a.file}")
        if i + 1 < len(names):  # let the kernel read the next pair ahead while this one is used
            nxt = names[i + 1]
            for w in (current, previous):
                if nxt in w.entries:
                    _will_need(w.entries[nxt])
        yield name, current.delta(name, previous, dtype)  # a fresh tensor the consumer owns


def _spread_large(names: list[str], w: WeightFiles) -> list[str]:
    """Keep file order, but never yield two of the largest tensors back to back.

    NOTE: a consumer's ``for name, d in field(...)`` keeps the previous ``d`` alive while the
    next one is read, so two consecutive embedding-sized tensors would double the peak. Spreading
    the large ones (over half the largest size) between small ones costs a seek or two; each large
    one follows the smallest tensor of the segment before it (a bias, not a 9 MB MLP matrix).
    """
    sizes = {n: w.entries[n].nbytes if n in w.entries else 0 for n in names}
    if len(names) < 3:
        return names
    cut = max(sizes.values()) / 2
    big = [n for n in names if sizes[n] > cut]
    small = [n for n in names if sizes[n] <= cut]
    if len(big) < 2 or not small:
        return names
    out, step = [], len(small) / len(big)
    for i, n in enumerate(big):
        lo, hi = round(i * step), round((i + 1) * step)
        seg = small[lo:hi]
        if seg and i + 1 < len(big):  # end on the segment's smallest: the next big one follows it
            tiny = min(seg, key=lambda m: sizes[m])
            seg = [m for m in seg if m != tiny] + [tiny]
        out += [n, *seg]
    return out


def _will_need(e: TensorEntry) -> None:
    """Ask the kernel to start reading this tensor's bytes (asynchronous readahead)."""
    if not hasattr(os, "posix_fadvise") or e.start < 0:  # non-POSIX, or a .bin entry (no offsets)
        return
    fd = os.open(e.file, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, e.start, e.nbytes, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
