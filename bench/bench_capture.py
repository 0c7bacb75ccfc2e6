"""Overhead of the capture callback on a ~10M-parameter GPT-NeoX trained with transformers' Trainer.

Baseline: the same run with a plain callback that only ``save_pretrained``s at the same steps
(what any run that checkpoints does). Capture: `HarnessCallback` with default settings (train
and validation gradients of the default modules, per-token validation losses, loss log).
Runs alternate (baseline, capture, baseline, ...) and the median wall times are compared.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_capture.py --steps 60 --every 10 --reps 2

Prints min/median/max wall times, the ratio capture / baseline (issue 18 target: <= 1.05 at a
checkpoint every 10 steps), where the recorder's time goes (validation forward+backward for the
validation gradients vs writing files), and the overhead projected for Pythia-like spacing
(checkpoints at 0, 1, 2, 4, ..., 512 and then every 1000 steps; issue 18 target <= 1%) from the
measured cost per checkpoint and time per training step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Trainer, TrainerCallback, TrainingArguments

from harness.capture import HarnessCallback, Schedule


class SaveOnly(TrainerCallback):
    def __init__(self, out: Path, schedule: Schedule):
        self.out, self.schedule = out, schedule

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if state.global_step in self.schedule:
            model.save_pretrained(str(self.out / f"step_{state.global_step}"))

    def on_train_end(self, args, state, control, model=None, **kw):
        model.save_pretrained(str(self.out / f"step_{state.global_step}"))


def model_10m(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=512, hidden_size=256, num_hidden_layers=12, num_attention_heads=8,
                        intermediate_size=1024, max_position_embeddings=256, rotary_pct=0.25,
                        tie_word_embeddings=False, attn_implementation="eager")
    return GPTNeoXForCausalLM(cfg).to(device)


def run(kind: str, out: Path, steps: int, every: int, batch: int, seq: int, device: str) -> tuple[float, dict]:
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 512, (steps * batch, seq), generator=g)
    ds = [{"input_ids": r, "labels": r} for r in data]
    val = torch.randint(0, 512, (batch, seq), generator=g)
    schedule = Schedule(every=every, log_until=0)
    cb = SaveOnly(out, schedule) if kind == "baseline" else HarnessCallback(out, val_batch=val, schedule=schedule)
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-3, save_strategy="no", report_to=[], logging_steps=10**6,
                             use_cpu=device == "cpu", disable_tqdm=True, seed=0, max_grad_norm=0.0)
    trainer = Trainer(model=model_10m(device), args=args, train_dataset=ds, callbacks=[cb])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return wall, (cb.recorder.timings if kind == "capture" else {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    n = sum(p.numel() for p in model_10m("cpu").parameters())
    walls: dict[str, list[float]] = {"baseline": [], "capture": []}
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        run("baseline", Path(tmp) / "warmup", min(a.steps, 5), a.every, a.batch, a.seq, a.device)  # warm caches
        for rep in range(a.reps):
            for kind in ("baseline", "capture"):
                w, t = run(kind, Path(tmp) / f"{kind}{rep}", a.steps, a.every, a.batch, a.seq, a.device)
                walls[kind].append(w)
                timings = t or timings
    b, c = statistics.median(walls["baseline"]), statistics.median(walls["capture"])
    mmm = lambda xs: f"min {min(xs):.2f} median {statistics.median(xs):.2f} max {max(xs):.2f}"  # noqa: E731
    n_ckpt = len(Schedule(every=a.every, log_until=0).steps(a.steps - 1)) + 1
    print(f"model: GPT-NeoX {n / 1e6:.2f}M params on {a.device}; {a.steps} steps of {a.batch}x{a.seq} tokens; "
          f"{n_ckpt} checkpoints (every {a.every} + final)")
    print(f"baseline (save_pretrained only) wall s: {mmm(walls['baseline'])}  {[round(x, 2) for x in walls['baseline']]}")
    print(f"capture (HarnessCallback)       wall s: {mmm(walls['capture'])}  {[round(x, 2) for x in walls['capture']]}")
    print(f"recorder time in last capture run: {({k: round(v, 2) for k, v in timings.items()})} "
          f"(gradients_s = validation forward+backward; save_s = files beyond save_pretrained's)")
    print(f"ratio capture/baseline (median): {c / b:.3f}  (overhead {100 * (c / b - 1):+.1f}%, target <= +5%)")
    per_ckpt = timings.get("checkpoint_s", 0.0) / n_ckpt
    step_s = b / a.steps
    pythia_steps, pythia_ckpts = 143_000, 154  # Pythia: 0, 1, 2, 4, ..., 512, then every 1000
    print(f"per checkpoint {per_ckpt:.2f} s = {per_ckpt / step_s:.2f} training steps; projected overhead at "
          f"Pythia-like spacing ({pythia_ckpts} checkpoints in {pythia_steps} steps): "
          f"{100 * pythia_ckpts * per_ckpt / (pythia_steps * step_s):.2f}% (target <= 1%)")


if __name__ == "__main__":
    main()
