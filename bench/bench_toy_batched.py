"""The batched toy trainer against its floor (the exponentials of its own logits) and against loops.

    python bench/bench_toy_batched.py [--k 16] [--steps 300] [--batch 1024] [--threads 1] [--repeats 5]

Prints min/median/max over ``--repeats`` of:

* the batched trainer's time per step (K configurations as one tensor program);
* the *exp floor* on the run's own logits: a bare ``torch.exp`` on the shifted teacher logits
  ``z_t - max z_t`` and student logits ``z_s - max z_s`` of a real batch of this run (same
  shapes (K, B, V), same values: the run's seeds, temperatures and its final student), i.e. the
  exponentials a step cannot avoid. Reported bare (as issue 18 defines the floor) and with the
  clamp the trainer applies (`train.exp_floor`: no result underflows, the slow path of exp);
* a loop over configurations with the same trainer, and the autograd + torch.optim reference.

Targets (issue 18): step <= 1.3x the bare exp floor for K=16, B=1024; batched >= the loop's speed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from harness_plugins.models.toy_softmax.train import ToyConfig, exp_floor, rms_normalise, teacher_weights, train


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


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def run_logits(configs, result, d, vocab, batch):
    """Shifted teacher and student logits (K, B, V) of this run's first batch (final student)."""
    seeds = sorted({c.seed for c in configs})
    xs = {s: rms_normalise(torch.randn(batch, d, generator=torch.Generator().manual_seed(s))) for s in seeds}
    x = torch.stack([xs[c.seed] for c in configs])
    temps = torch.tensor([c.temperature for c in configs])[:, None, None]
    z_t = torch.bmm(x, torch.stack([teacher_weights(d, vocab, c.seed) for c in configs]).transpose(1, 2)) / temps
    z_s = torch.bmm(x, result.student[:, -1].transpose(1, 2))
    return z_t - z_t.amax(-1, keepdim=True), z_s - z_s.amax(-1, keepdim=True)


def fmt(xs, scale=1.0, unit="s"):
    xs = [x * scale for x in xs]
    return f"min {min(xs):8.3f}  median {statistics.median(xs):8.3f}  max {max(xs):8.3f} {unit}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the family's default is 1)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) autograd reference loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    temps = [1e-3, 3e-3, 1e-2, 3e-2]
    configs = [ToyConfig(temps[i % len(temps)], 30.0, i // len(temps)) for i in range(args.k)]
    kw = dict(d=args.d, vocab=args.vocab, steps=args.steps, batch_size=args.batch, optimizer="sgd",
              ckpt_steps=[0, args.steps], threads=args.threads)
    result = train(configs, **kw)  # warm-up, and the final student for the floor's logits
    batched = timed(lambda: train(configs, **kw), args.repeats)
    z_t, z_s = run_logits(configs, result, args.d, args.vocab, args.batch)
    lo = exp_floor(torch.float32)
    floor_t = timed(lambda: torch.exp(z_t), 5 * args.repeats)
    floor_s = timed(lambda: torch.exp(z_s), 5 * args.repeats)
    floor_c = timed(lambda: (torch.exp(z_t.clamp(min=lo)), torch.exp(z_s.clamp(min=lo))), 5 * args.repeats)
    loop = timed(lambda: [train([c], **kw) for c in configs], max(1, args.repeats // 2))
    per_step = [t / args.steps for t in batched]
    print(f"K={args.k} steps={args.steps} batch={args.batch} d={args.d} V={args.vocab} threads={args.threads} "
          f"repeats={args.repeats} (times: min/median/max)")
    print(f"teacher logits shifted: {100 * float((z_t < lo).float().mean()):.1f}% of elements underflow exp "
          f"(min {float(z_t.min()):.3g})")
    print(f"batched step:                       {fmt(per_step, 1e3, 'ms')}")
    print(f"exp floor, bare exp(teacher):       {fmt(floor_t, 1e3, 'ms')}")
    print(f"exp floor, bare exp(teacher+student):{fmt([a + b for a, b in zip(floor_t, floor_s)], 1e3, 'ms')}")
    print(f"exp floor, clamped (what we run):   {fmt(floor_c, 1e3, 'ms')}")
    med = statistics.median
    print(f"ratio step / bare teacher exp floor: {med(per_step) / med(floor_t):.2f}x (target <= 1.3x)")
    print(f"ratio step / clamped exp floor:      {med(per_step) / med(floor_c):.2f}x")
    print(f"batched run:                        {fmt(batched)}")
    print(f"loop over configs, same trainer:    {fmt(loop)}   ratio loop/batched {med(loop) / med(batched):5.2f}x "
          "(target >= 1)")
    if not args.no_reference:
        ref = timed(lambda: reference_loop(configs, args.d, args.vocab, args.steps, args.batch),
                    max(1, args.repeats // 2))
        print(f"loop over configs, autograd+optim:  {fmt(ref)}   ratio {med(ref) / med(batched):5.2f}x")


if __name__ == "__main__":
    main()
