"""Batched training of the one-third teacher-student softmax model (Liu et al. 2026, exp-1).

K configurations (temperatures x learning rates x seeds) train as ONE tensor program: every
weight is a (K, V, d) tensor and each step is a handful of batched matmuls. The gradient of
KL(teacher || student) with respect to the student logits is exact and cheap,
``(softmax(student) - softmax(teacher)) / B``, so we form it directly instead of running
autograd (which would only rebuild the same three matmuls with more overhead). Adam is written
out for the same reason: per-configuration learning rates on one batched tensor, which
``torch.optim.Adam`` (one lr per parameter group) cannot express without splitting the batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class ToyConfig:
    temperature: float
    lr: float
    seed: int


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """``F.rms_norm`` without weight and eps = fp32 machine epsilon, as in the paper's code."""
    return F.rms_norm(x, (x.shape[-1],), eps=torch.finfo(torch.float32).eps)


def teacher_weights(d: int, vocab: int, seed: int) -> torch.Tensor:
    """``nn.Linear(d, V, bias=False)`` default init, U(+-1/sqrt(d)), fixed by seed."""
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    bound = 1.0 / math.sqrt(d)
    return (torch.rand(vocab, d, generator=g) * 2 - 1) * bound


#: logits elements per block of the batched step: blocks of about this size (1 MB of fp32 per
#: (K, b, V) tensor) stay in cache; measured (issue 18, K=16, B=1024, 1 thread) 1.6-1.8x faster
#: per step than 2 MB blocks once the exponentials no longer dominate
BLOCK_ELEMENTS = 1 << 18


def batch_chunk(k: int, batch_size: int, vocab: int) -> int:
    """Batch rows per block so that a (k, rows, vocab) tensor holds about BLOCK_ELEMENTS."""
    return max(1, min(batch_size, BLOCK_ELEMENTS // max(1, k * vocab)))


def lr_at(step: int, base: torch.Tensor, steps: int, schedule: str) -> torch.Tensor:
    if schedule == "cosine":  # cosine to 10% of the base rate
        return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))))
    return base


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step 0 plus ``n`` log-spaced integer steps in [1, steps] (duplicates merged)."""
    if n <= 0 or steps <= 0:
        return [0]
    grid = {0, steps}
    for j in range(n):
        grid.add(int(round(math.exp(math.log(steps) * j / max(n - 1, 1)))))
    return sorted(s for s in grid if 0 <= s <= steps)


@dataclass
class TrainResult:
    configs: list[ToyConfig]
    ckpt_steps: list[int]
    student: torch.Tensor  # (K, n_ckpt, V, d) student weights at each checkpoint
    teacher: torch.Tensor  # (K, V, d)
    train_loss: torch.Tensor  # (K, steps) loss of the fresh batch before each update
    learning_rate: torch.Tensor  # (K, steps) learning rate of each update


def kl_and_grad(x: torch.Tensor, w_s: torch.Tensor, w_t: torch.Tensor, temps: torch.Tensor,
                teacher_raw: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None):
    """Per-config mean KL(teacher||student) and its gradient wrt the student weights.

    x: (K, B, d); w_s, w_t: (K, V, d); temps: (K,). ``teacher_raw`` (K, B, V), if given, holds
    ``x @ w_t^T`` already (configs sharing a seed share it); ``teacher_logits`` (K, B, V), if
    given, holds ``x @ w_t^T / T`` (the trainer forms it with one bmm against ``w_t / T``, which
    saves a gather and a division pass over the logits). Returns (loss (K,), grad (K, V, d)).

    KL = sum_v p_t (z_t - z_s) - lse(z_t) + lse(z_s); the exponential dominates the step's cost
    on a CPU, so each logits tensor is exponentiated once.
    """
    batch = x.shape[1]
    if teacher_logits is not None:
        z_t = teacher_logits
    else:
        z_t = (teacher_raw if teacher_raw is not None else torch.bmm(x, w_t.transpose(1, 2))) / temps[:, None, None]
    z_s = torch.bmm(x, w_s.transpose(1, 2))
    p_t, lse_t = _softmax_and_lse(z_t)
    p_s, lse_s = _softmax_and_lse(z_s)
    loss = (torch.linalg.vecdot(p_t, z_t.sub_(z_s)) - lse_t + lse_s).mean(-1)
    grad = torch.bmm(p_s.sub_(p_t).transpose(1, 2), x).div_(batch)
    return loss, grad


def exp_floor(dtype: torch.dtype) -> float:
    """Smallest shift ``z - max`` whose exponential is still a *normal* float of ``dtype``.

    NOTE (measured, bench/bench_toy_batched.py): torch's vectorised exp takes a slow path for
    every element whose result underflows (denormal or zero). The teacher's logits are peaked
    (temperatures 1e-3..3e-2 give shifted logits down to about -1e4), so almost every element
    underflows and a bare ``torch.exp`` on them is 20-60x slower than on N(0, 1) data. Clamping
    the shift at this bound first keeps every result normal; it changes an element only where
    the exact value is below ``finfo.tiny`` (1.2e-38 in fp32), far under the rounding of any
    sum that includes the max term exp(0) = 1, so softmax and logsumexp are unchanged to the
    last bit except for those sub-``tiny`` entries (tested).
    """
    return math.log(torch.finfo(dtype).tiny) + 0.5


def _softmax_and_lse(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(z) and logsumexp(z) over the last axis with ONE exp pass (the step's cost is the
    exponential: torch.softmax plus torch.logsumexp would compute it twice), on shifts clamped
    to `exp_floor` so no result underflows (the slow path of exp)."""
    m = z.amax(-1, keepdim=True)
    e = (z - m).clamp_(min=exp_floor(z.dtype)).exp_()
    total = e.sum(-1, keepdim=True)
    return e.div_(total), (m + total.log()).squeeze(-1)


def train(
    configs: Sequence[ToyConfig],
    *,
    d: int,
    vocab: int,
    steps: int,
    batch_size: int,
    optimizer: str,
    ckpt_steps: Sequence[int],
    lr_schedule: str = "constant",
    device: str = "cpu",
    threads: int | None = 1,
) -> TrainResult:
    """Train every configuration at once; inputs are drawn per seed (configs sharing a seed see
    the same stream of fresh batches, as a loop over temperatures with one seed would).

    ``threads``: torch intra-op threads while training (None or 0: leave torch's setting).
    NOTE: 1 by default. The step is a handful of small batched ops (1 MB blocks), which a second
    thread barely speeds up on an idle machine, while on a busy one the thread pool's spin-waits
    make it 8-40x slower (measured, K=16, B=1024, 2 cores at load 7: 30 ms/step with 1 thread,
    240-1260 ms with 2; K=2: 5 vs 55 ms); see bench/bench_toy_batched.py ``--threads``.
    """
    with intra_op_threads(threads):
        return _train(configs, d=d, vocab=vocab, steps=steps, batch_size=batch_size, optimizer=optimizer,
                      ckpt_steps=ckpt_steps, lr_schedule=lr_schedule, device=device)


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous count after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def _train(configs: Sequence[ToyConfig], *, d: int, vocab: int, steps: int, batch_size: int, optimizer: str,
           ckpt_steps: Sequence[int], lr_schedule: str, device: str) -> TrainResult:
    k = len(configs)
    dev = torch.device(device)
    seeds = sorted({c.seed for c in configs})
    seed_index = torch.tensor([seeds.index(c.seed) for c in configs], device=dev)
    gens = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
    temps = torch.tensor([c.temperature for c in configs], device=dev)
    base_lr = torch.tensor([c.lr for c in configs], device=dev)
    w_t = torch.stack([teacher_weights(d, vocab, c.seed) for c in configs]).to(dev)
    w_s = torch.zeros(k, vocab, d, device=dev)
    m = torch.zeros_like(w_s) if optimizer == "adam" else None
    v = torch.zeros_like(w_s) if optimizer == "adam" else None
    want = set(ckpt_steps)
    saved: dict[int, torch.Tensor] = {}
    losses = torch.empty(k, steps)
    lrs = torch.empty(k, steps)
    if 0 in want:
        saved[0] = w_s.clone()
    # the teacher's logits x @ (W_t / T)^T: one bmm per block against weights scaled once, instead
    # of per-seed raw logits gathered per configuration and divided by T (two passes over the
    # (K, b, V) logits, measured ~1.3x slower per step for K=16)
    w_t_scaled = (w_t / temps[:, None, None]).transpose(1, 2)
    chunk = batch_chunk(k, batch_size, vocab)
    for step in range(steps):
        xs = rms_normalise(torch.stack([torch.randn(batch_size, d, generator=g, device=dev) for g in gens]))
        xs = xs[seed_index] if len(seeds) > 1 else xs.expand(k, -1, -1)  # (K, B, d): d-wide, cheap
        loss = torch.zeros(k, device=dev)
        grad = torch.zeros_like(w_s)
        for i in range(0, batch_size, chunk):
            x_c = xs[:, i : i + chunk]
            z_t = torch.bmm(x_c, w_t_scaled)
            part_loss, part_grad = kl_and_grad(x_c, w_s, w_t, temps, teacher_logits=z_t)
            weight = x_c.shape[1] / batch_size
            loss.add_(part_loss, alpha=weight)
            grad.add_(part_grad, alpha=weight)
        lr = lr_at(step, base_lr, steps, lr_schedule)
        if optimizer == "adam":
            b1, b2 = ADAM_BETAS
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            m_hat = m / (1 - b1 ** (step + 1))
            v_hat = v / (1 - b2 ** (step + 1))
            w_s -= lr[:, None, None] * m_hat / (v_hat.sqrt() + ADAM_EPS)
        else:
            w_s -= lr[:, None, None] * grad
        losses[:, step] = loss.detach().cpu()
        lrs[:, step] = lr.cpu()
        if step + 1 in want:
            saved[step + 1] = w_s.clone()
    order = sorted(saved)
    return TrainResult(
        configs=list(configs),
        ckpt_steps=order,
        student=torch.stack([saved[s] for s in order], dim=1).cpu(),
        teacher=w_t.cpu(),
        train_loss=losses,
        learning_rate=lrs,
    )
