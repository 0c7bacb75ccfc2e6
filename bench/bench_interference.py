"""Benchmark of per-example gradient opposition, as multiples of one batched forward+backward.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_interference.py            # all sections
    .venv/bin/python bench/bench_interference.py --only sequence --configs tiny

Sections:
  sequence  per-sequence opposition: Python loop over examples, torch.func vmap, Opacus's
            GradSampleModule (when opacus is installed: ``pip install -c constraints.txt
            harness[bench]``; otherwise the column says "opacus not installed"; its D is checked
            against the hooks method's), and the hooks method (one batched backward +
            per-row outer products), on a tiny GPT-NeoX (hidden 128, 4 layers, 32 x 128 tokens)
            and a 25M one (hidden 512, 8 layers; smaller batch).
  token     exact per-token opposition: ZSL's per-position algorithm (one backward per position)
            vs ours (K positions per vmapped backward, sequences truncated per chunk), on the
            same slice of positions; plus the rank-1 ``position`` decomposition for scale.
  memory    peak RSS growth of the per-token method at sequence length 512 on a 10M model,
            for two chunk budgets (the slice of positions at the end of the sequence, where
            chunks are longest).
Times: min/median/max of ``--repeat`` runs after a warm-up (ratios use the medians).
"""

from __future__ import annotations

import argparse
import os
import threading
import sys
import time
from pathlib import Path

import torch

from harness.api import CheckpointRef
from harness.lm import CausalLMCheckpoint, random_token_batches, tiny_gpt_neox
from harness_plugins.metrics.interference.opposition import find_targets, opposition

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the brute-force oracles live in the tests
from opposition_oracles import opposition_loop, opposition_per_position, opposition_vmap  # noqa: E402

CONFIGS = {  # name: (hidden, layers, heads, vocab, batch, seq)
    "tiny": (128, 4, 4, 512, 32, 128),
    "25m": (512, 8, 8, 512, 8, 128),
}


def _setup(hidden, layers, heads, vocab, batch, seq):
    model = tiny_gpt_neox(vocab_size=vocab, hidden=hidden, layers=layers, heads=heads, max_positions=max(seq, 128))
    ck = CausalLMCheckpoint(CheckpointRef("bench", "m", "s", 0), model, random_token_batches(vocab, 1, batch, seq))
    return model, ck, ck.eval_batches()


def _time(fns: dict, repeat: int) -> dict:
    """Median wall time of each function, timed round-robin (one warm-up each) so that load
    from other processes on a shared machine drifts over all methods alike; every run's time
    is kept in ``_time.runs`` for the min/median/max lines."""
    import statistics

    for fn in fns.values():
        fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    _time.runs = runs
    return {name: statistics.median(v) for name, v in runs.items()}


def _spread() -> str:
    """``name min/median/max`` of the last `_time` call, in seconds."""
    import statistics

    return "  ".join(f"{n} {min(v):.3f}/{statistics.median(v):.3f}/{max(v):.3f}" for n, v in _time.runs.items())


def opposition_opacus(model, loss_fn, batches, targets, bins: int = 100):
    """Per-sequence opposition from Opacus's per-sample gradients (``GradSampleModule``, the DP
    library's hooks): the same accumulator as the other methods, fed ``p.grad_sample``."""
    from opacus import GradSampleModule

    from harness_plugins.metrics.interference.opposition import OppositionAccumulator

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    acc = OppositionAccumulator({t.name: t.shape for t in targets}, device=targets[0].module.weight.device)
    params = dict(model.named_parameters())
    was_training = model.training
    gsm.train()  # Opacus records activations only in training mode (GPT-NeoX here has no dropout)
    try:
        with torch.enable_grad():
            for batch in batches:
                gsm.zero_grad(set_to_none=True)
                loss_fn(batch, gsm).float().sum().backward()
                for t in targets:
                    acc.add_examples(t.name, params[t.name].grad_sample.float())
                acc.n_examples += batch.shape[0]
    finally:
        gsm.zero_grad(set_to_none=True)
        gsm._close()
        model.train(was_training)
    return acc.result(bins, "sequence")


def _fwd_bwd(model, ck, batches):
    def run():
        model.zero_grad(set_to_none=True)
        for b in batches:
            ck.per_example_loss(b).mean().backward()
        model.zero_grad(set_to_none=True)

    return run


def bench_sequence(names, repeat):
    print("\n== per-sequence gradient opposition (multiples of one batched fwd+bwd) ==")
    print(f"{'config':8} {'params':>8} {'fwd+bwd s':>10} {'loop':>7} {'vmap':>7} {'opacus':>7} {'hooks':>7}")
    for name in names:
        model, ck, batches = _setup(*CONFIGS[name])
        targets, _ = find_targets(model)
        n_params = sum(p.numel() for p in model.parameters())
        fns = {
            "base": _fwd_bwd(model, ck, batches),
            "hooks": lambda: opposition(model, ck.per_example_loss, batches, targets, example="sequence"),
            "loop": lambda: opposition_loop(model, ck.per_example_loss, batches, targets),
            "vmap": lambda: opposition_vmap(model, ck.per_example_loss, batches, targets, chunk_size=8),
        }
        try:
            import opacus  # noqa: F401
        except ImportError:
            opacus = None
        if opacus is not None:
            fns["opacus"] = lambda: opposition_opacus(model, ck.per_example_loss, batches, targets)
        t = _time(fns, repeat)
        base, hooks, loop, vm = t["base"], t["hooks"], t["loop"], t["vmap"]
        op = f"{t['opacus'] / base:7.2f}" if opacus is not None else "opacus not installed"
        print(f"{name:8} {n_params / 1e6:7.1f}M {base:10.3f} {loop / base:7.2f} {vm / base:7.2f} {op:>7} {hooks / base:7.2f}")
        print(f"         min/median/max s: {_spread()}")
        if opacus is not None:  # same numbers as ours, or the column is not comparable
            d_ours = opposition(model, ck.per_example_loss, batches, targets, example="sequence").D
            d_op = opposition_opacus(model, ck.per_example_loss, batches, targets).D
            print(f"         D hooks {d_ours:.6f}  D opacus {d_op:.6f}  |diff| {abs(d_ours - d_op):.2e}")


def bench_token(names, repeat, n_positions):
    print(f"\n== exact per-token opposition (tiny: 8 x 128, all positions; others: 2 x 128, the last {n_positions}) ==")
    print(f"{'config':8} {'fwd+bwd s':>10} {'per-position (ZSL)':>19} {'ours':>7} {'ours/ZSL':>9} {'rank-1 position':>16}")
    for name in names:
        hidden, layers, heads, vocab, batch, seq = CONFIGS[name]
        batch = 8 if name == "tiny" else 2  # one backward per position: keep it to minutes
        model, ck, batches = _setup(hidden, layers, heads, vocab, batch, seq)
        targets, _ = find_targets(model)
        # tiny: every position of the sequence; larger: the last n_positions (the costliest)
        pos = (0, seq - 1) if name == "tiny" else (seq - 1 - n_positions, seq - 1)
        t = _time({
            "base": _fwd_bwd(model, ck, batches),
            "zsl": lambda: opposition_per_position(model, ck.per_example_loss, batches, targets, positions=pos),
            "ours": lambda: opposition(model, ck.per_example_loss, batches, targets, example="token", positions=pos),
            "r1": lambda: opposition(model, ck.per_example_loss, batches, targets, example="position"),
        }, repeat)
        base, zsl, ours, r1 = t["base"], t["zsl"], t["ours"], t["r1"]
        print(f"{name:8} {base:10.3f} {zsl / base:18.1f}x {ours / base:6.1f}x {ours / zsl:9.2f} {r1 / base:15.2f}x")
        print(f"         min/median/max s: {_spread()}")


class _PeakRSS:
    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self._rss()
        self.peak = self.start
        self.stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()

    @property
    def mb(self):
        return (self.peak - self.start) / 2**20


def bench_memory(n_positions):
    print("\n== per-token opposition at sequence length 512, 10M-parameter GPT-NeoX, 2 x 512 tokens "
          "(one run each: peak memory) ==")
    model, ck, batches = _setup(384, 6, 6, 2048, 2, 512)
    targets, _ = find_targets(model)
    n_params = sum(p.numel() for p in model.parameters())
    pos = (511 - n_positions, 511)  # the last positions: the longest backward passes
    fb = _fwd_bwd(model, ck, batches)
    fb()  # warm-up: allocator arenas exist before anything is measured
    opposition(model, ck.per_example_loss, batches, targets, example="token", positions=(510, 511))
    with _PeakRSS() as m:
        t0 = time.perf_counter()
        fb()
        base = time.perf_counter() - t0
    print(f"  {n_params / 1e6:.1f}M params; one batched fwd+bwd {base:.2f} s, peak RSS +{m.mb:.0f} MiB")
    runs = [("ZSL per-position", lambda: opposition_per_position(model, ck.per_example_loss, batches, targets,
                                                                 positions=pos))]
    runs += [(f"ours chunk_mb={b}", lambda b=b: opposition(model, ck.per_example_loss, batches, targets,
                                                           example="token", chunk_mb=b, positions=pos))
             for b in (64, 256, 1024)]
    for label, fn in runs:
        with _PeakRSS() as m:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        print(f"  {label:20}: peak RSS +{m.mb:5.0f} MiB, {dt / n_positions / base:6.2f} x fwd+bwd per position")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["sequence", "token", "memory"], action="append")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--positions", type=int, default=16, help="positions timed in the token/memory sections")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    only = args.only or ["sequence", "token", "memory"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "sequence" in only:
        bench_sequence(args.configs, args.repeat)
    if "token" in only:
        bench_token(args.configs, args.repeat, args.positions)
    if "memory" in only:
        bench_memory(args.positions)


if __name__ == "__main__":
    main()
