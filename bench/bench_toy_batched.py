"""Training K toy configurations as one batched program vs a Python loop over them.

    python bench/bench_toy_batched.py [--k 16] [--steps 300] [--batch 1024] [--threads 2]

Prints wall times and the ratio loop / batched (issue target: >= 8x for K = 16), for two loops:
our own trainer called once per configuration, and the straightforward per-configuration
reference (autograd + torch.optim, as in the paper's scripts).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from harness_plugins.models.toy_softmax.train import ToyConfig, rms_normalise, teacher_weights, train


def reference_loop(configs, d, vocab, steps, batch):
    """One configuration at a time with autograd and torch.optim.SGD (the paper's exp-1 style)."""
    for cfg in configs:
        gen = torch.Generator().manual_seed(cfg.seed)
        w_t = teacher_weights(d, vocab, cfg.seed)
        student = torch.nn.Linear(d, vocab, bias=False)
        torch.nn.init.zeros_(student.weight)
        opt = torch.optim.SGD(student.parameters(), lr=cfg.lr)
        for _ in range(steps):
            x = rms_normalise(torch.randn(batch, d, generator=gen))
            loss = F.kl_div(F.log_softmax(student(x), -1), F.log_softmax(x @ w_t.T / cfg.temperature, -1),
                            log_target=True, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    temps = [1e-3, 3e-3, 1e-2, 3e-2]
    configs = [ToyConfig(temps[i % len(temps)], 30.0, i // len(temps)) for i in range(args.k)]
    kw = dict(d=args.d, vocab=args.vocab, steps=args.steps, batch_size=args.batch, optimizer="sgd",
              ckpt_steps=[0, args.steps])
    batched = best_of(lambda: train(configs, **kw), args.repeats)
    loop = best_of(lambda: [train([c], **kw) for c in configs], args.repeats)
    ref = best_of(lambda: reference_loop(configs, args.d, args.vocab, args.steps, args.batch), args.repeats)
    print(f"K={args.k} steps={args.steps} batch={args.batch} d={args.d} V={args.vocab} threads={args.threads}")
    print(f"batched (one tensor program):     {batched:8.3f} s")
    print(f"loop over configs, same trainer:  {loop:8.3f} s   ratio {loop / batched:5.2f}x")
    print(f"loop over configs, autograd+optim:{ref:8.3f} s   ratio {ref / batched:5.2f}x")


if __name__ == "__main__":
    main()
