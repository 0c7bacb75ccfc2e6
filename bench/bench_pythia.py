"""Benchmark: delta RMS of every tensor between two ~160M-parameter GPT-NeoX checkpoints.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_pythia.py [--keep DIR] [--repeat N]

Creates two Pythia-160m-shaped checkpoints (random init, then perturbed; fp32 safetensors,
about 620 MB each) with ``save_pretrained`` in a temporary directory (deleted afterwards unless
``--keep``), then runs each method in its own subprocess, so its peak RSS (VmHWM) is its own:

* ``baseline``: only the imports of the streaming method (torch + the plugin's reader);
* ``from_pretrained``: both models loaded with transformers, parameters subtracted;
* ``safe_open``: `safetensors.safe_open` (memory-mapped), tensor pairs subtracted;
* ``stream_deltas``: the core's streaming reader (`harness.weights`) that every family's delta
  field runs on (per-tensor reads, chunked subtraction);
* ``cat``: ``cat a b > /dev/null``, the plain read of both files.

Each method computes the RMS of every tensor's delta (checked equal across methods). Times
exclude interpreter start-up and imports. Two modes: ``cold`` evicts the two files from the page
cache before every run (``posix_fadvise(DONTNEED)`` on these files only) and then CHECKS with
``mincore`` how much of them is still resident (the kernel may keep pages another process has
mapped or dirty): runs whose files are still resident are counted and reported as not cold.
``warm`` reads them from the page cache. Every figure is min/median/max over ``--repeat`` runs
(default 5), methods interleaved so load from other processes drifts over all alike; ratios use
medians. Targets (issues 3, 18): peak RSS of stream_deltas <= 0.2x from_pretrained (both models),
time <= 3x the plain read (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHILD = {
    "baseline": """
        import torch
        from harness.weights import WeightFiles
        t0 = time.perf_counter(); out = {}
    """,
    "from_pretrained": """
        import torch
        from transformers import GPTNeoXForCausalLM
        t0 = time.perf_counter()
        a = GPTNeoXForCausalLM.from_pretrained(A); b = GPTNeoXForCausalLM.from_pretrained(B)
        pa = dict(a.named_parameters())
        with torch.no_grad():
            out = {n: rms(p - pa[n]) for n, p in b.named_parameters()}
    """,
    "safe_open": """
        import torch
        from safetensors import safe_open
        t0 = time.perf_counter(); out = {}
        with safe_open(A + "/model.safetensors", "pt") as fa, safe_open(B + "/model.safetensors", "pt") as fb:
            for n in fb.keys():
                out[n] = rms(fb.get_tensor(n) - fa.get_tensor(n))
    """,
    "stream_deltas": """
        import torch
        from harness.weights import WeightFiles, stream_deltas
        t0 = time.perf_counter(); out = {}
        cur, prev = WeightFiles.open([B + "/model.safetensors"]), WeightFiles.open([A + "/model.safetensors"])
        for n, d in stream_deltas(cur, prev):
            out[n] = rms(d)
    """,
}

PRELUDE = """
import json, sys, time
A, B = sys.argv[1], sys.argv[2]

def rms(x):  # one pass, no temporary of x's size
    import torch
    return float(torch.linalg.vector_norm(x) / x.numel() ** 0.5)
"""
EPILOGUE = """
dt = time.perf_counter() - t0
# NOTE: VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across exec
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
sys.stdout.write(json.dumps({"seconds": dt, "peak_rss_mb": rss, "rms": out}))
"""


def make_checkpoints(root: Path) -> tuple[Path, Path]:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, rotary_pct=0.25, use_parallel_residual=True,
                        tie_word_embeddings=False, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg)
    a, b = root / "step0", root / "step1000"
    model.save_pretrained(str(a))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=1e-3)
    model.save_pretrained(str(b))
    return a, b


def evict(*dirs: Path) -> None:
    """Drop these two files' pages from the page cache (nothing global), so the next read is cold."""
    for d in dirs:
        fd = os.open(d / "model.safetensors", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(*dirs: Path) -> float | None:
    """Fraction of the two files' pages in the page cache (``mincore``), None if it cannot tell."""
    import ctypes
    import mmap

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    total = resident = 0
    for d in dirs:
        path = d / "model.safetensors"
        size = path.stat().st_size
        n = (size + page - 1) // page
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            vec = (ctypes.c_ubyte * n)()
            ok = libc.mincore(ctypes.c_void_p(addr), size, vec) == 0
            libc.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
        if not ok:
            return None
        total += n
        resident += sum(v & 1 for v in vec)
    return resident / max(total, 1)


#: a cold run with more than this fraction of the files still cached is not cold
COLD_MAX_RESIDENT = 0.05


def run_child(method: str, a: Path, b: Path, cold: bool) -> dict:
    resident = None
    if cold:
        evict(a, b)
        resident = resident_fraction(a, b)
    code = PRELUDE + textwrap.dedent(CHILD[method]) + EPILOGUE
    res = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-3000:]}")
    return {**json.loads(res.stdout), "resident_before": resident}


def time_cat(a: Path, b: Path, cold: bool) -> dict:
    resident = None
    if cold:
        evict(a, b)
        resident = resident_fraction(a, b)
    t0 = time.perf_counter()
    subprocess.run(["cat", str(a / "model.safetensors"), str(b / "model.safetensors")], stdout=subprocess.DEVNULL,
                   check=True)
    return {"seconds": time.perf_counter() - t0, "resident_before": resident}


def _mmm(xs: list[float], fmt: str = "{:.2f}") -> str:
    return "/".join(fmt.format(v) for v in (min(xs), statistics.median(xs), max(xs)))


def report(mode: str, cat: list[dict], results: dict) -> None:
    ref = results["from_pretrained"][0]["rms"]
    for m in ("safe_open", "stream_deltas"):  # the same numbers as the full-model path
        for n, v in results[m][0]["rms"].items():
            key = "lm_head.weight" if n == "embed_out.weight" else n
            assert abs(ref[key] - v) <= 1e-6 * max(1.0, abs(v)), (m, n, ref[key], v)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_rss_mb")}
           for m, rs in results.items()}
    cat_s = [c["seconds"] for c in cat]
    print(f"\n[{mode} page cache] min/median/max over {len(cat)} runs")
    if mode == "cold":
        res = [r["resident_before"] for rs in [*results.values(), cat] for r in rs]
        if any(r is None for r in res):
            print("cold check: could not read page-cache residency (mincore unavailable): cold runs unverified")
        else:
            bad = sum(r > COLD_MAX_RESIDENT for r in res)
            print(f"cold check (mincore before each run): resident fraction of the two files max {max(res):.3f}; "
                  f"{bad} of {len(res)} runs NOT cold (> {COLD_MAX_RESIDENT:.0%} cached)"
                  + (": the page cache could not be dropped, read those as warm figures" if bad else ""))
    base = med["baseline"]["peak_rss_mb"]
    print(f"{'method':<16}{'time s':>20}{'peak RSS MB':>20}{'RSS - imports':>15}")
    print(f"{'cat (2 files)':<16}{_mmm(cat_s):>20}")
    for m, rs in results.items():
        print(f"{m:<16}{_mmm([r['seconds'] for r in rs]):>20}{_mmm([r['peak_rss_mb'] for r in rs], '{:.0f}'):>20}"
              f"{med[m]['peak_rss_mb'] - base:>15.0f}")
    s, f = med["stream_deltas"], med["from_pretrained"]
    print(f"stream_deltas / from_pretrained peak RSS: {s['peak_rss_mb'] / f['peak_rss_mb']:.3f} (target <= 0.2); "
          f"net of imports {(s['peak_rss_mb'] - base) / (f['peak_rss_mb'] - base):.3f}")
    print(f"stream_deltas / cat time:                 {s['seconds'] / statistics.median(cat_s):.2f} (target <= 3, warm)")
    print(f"stream_deltas / from_pretrained time:     {s['seconds'] / f['seconds']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="create/reuse the checkpoints in this directory and keep them")
    ap.add_argument("--repeat", type=int, default=5, help="runs per method (min/median/max reported)")
    ap.add_argument("--modes", default="cold,warm", help="cold, warm or both")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_pythia_"))
    try:
        if (root / "step1000" / "model.safetensors").exists():
            a, b = root / "step0", root / "step1000"
        else:
            t = time.perf_counter()
            a, b = make_checkpoints(root)
            print(f"created 2 checkpoints in {time.perf_counter() - t:.1f}s: "
                  f"{(a / 'model.safetensors').stat().st_size / 2**20:.0f} MB each")
        for mode in args.modes.split(","):
            cold = mode == "cold"
            time_cat(a, b, False)  # one untimed read
            cat: list[dict] = []
            results: dict[str, list[dict]] = {m: [] for m in CHILD}
            for _ in range(args.repeat):  # interleaved: load drifts over every method alike
                cat.append(time_cat(a, b, cold))
                for m in CHILD:
                    results[m].append(run_child(m, a, b, cold))
            report(mode, cat, results)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
