"""Benchmark: delta RMS of every tensor between two ~160M-parameter GPT-NeoX checkpoints.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_pythia.py [--keep DIR] [--repeat N]

Creates two Pythia-160m-shaped checkpoints (random init, then perturbed; fp32 safetensors,
about 620 MB each) with ``save_pretrained`` in a temporary directory (deleted afterwards unless
``--keep``), then runs each method in its own subprocess, so its peak RSS (VmHWM) is its own:

* ``baseline``: only the imports of the streaming method (torch + the plugin's reader);
* ``from_pretrained``: both models loaded with transformers, parameters subtracted;
* ``safe_open``: `safetensors.safe_open` (memory-mapped), tensor pairs subtracted;
* ``stream_deltas``: the Pythia plugin's delta field (per-tensor reads, chunked subtraction);
* ``cat``: ``cat a b > /dev/null``, the plain read of both files.

Each method computes the RMS of every tensor's delta (checked equal across methods). Times
exclude interpreter start-up and imports. Two modes: ``cold`` evicts the two files from the page
cache before every run (``posix_fadvise(DONTNEED)`` on these files only), ``warm`` reads them from
the page cache. Targets (issue 3): peak RSS of stream_deltas <= 0.2x from_pretrained, time <= 3x
the plain read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def run_child(method: str, a: Path, b: Path, cold: bool) -> dict:
    if cold:
        evict(a, b)
    code = PRELUDE + textwrap.dedent(CHILD[method]) + EPILOGUE
    res = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def time_cat(a: Path, b: Path, cold: bool) -> float:
    if cold:
        evict(a, b)
    t0 = time.perf_counter()
    subprocess.run(["cat", str(a / "model.safetensors"), str(b / "model.safetensors")], stdout=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - t0


def report(mode: str, cat: float, results: dict) -> None:
    best = {m: {"seconds": min(r["seconds"] for r in rs), "peak_rss_mb": min(r["peak_rss_mb"] for r in rs),
                "rms": rs[0]["rms"]} for m, rs in results.items()}
    ref = best["from_pretrained"]["rms"]
    for m in ("safe_open", "stream_deltas"):  # the same numbers as the full-model path
        for n, v in best[m]["rms"].items():
            key = "lm_head.weight" if n == "embed_out.weight" else n
            assert abs(ref[key] - v) <= 1e-6 * max(1.0, abs(v)), (m, n, ref[key], v)
    base = best["baseline"]["peak_rss_mb"]
    print(f"\n[{mode} page cache]")
    print(f"{'method':<16}{'time s':>9}{'peak RSS MB':>13}{'RSS - imports':>15}")
    print(f"{'cat (2 files)':<16}{cat:>9.2f}")
    for m in CHILD:
        r = best[m]
        print(f"{m:<16}{r['seconds']:>9.2f}{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] - base:>15.0f}")
    s, f = best["stream_deltas"], best["from_pretrained"]
    print(f"stream_deltas / from_pretrained peak RSS: {s['peak_rss_mb'] / f['peak_rss_mb']:.3f} (target <= 0.2); "
          f"net of imports {(s['peak_rss_mb'] - base) / (f['peak_rss_mb'] - base):.3f}")
    print(f"stream_deltas / cat time:                 {s['seconds'] / cat:.2f} (target <= 3)")
    print(f"stream_deltas / from_pretrained time:     {s['seconds'] / f['seconds']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="create/reuse the checkpoints in this directory and keep them")
    ap.add_argument("--repeat", type=int, default=2, help="runs per method (best time and RSS reported)")
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
            cat = min(time_cat(a, b, cold) for _ in range(args.repeat))
            results = {m: [run_child(m, a, b, cold) for _ in range(args.repeat)] for m in CHILD}
            report(mode, cat, results)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
