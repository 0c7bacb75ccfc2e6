"""Benchmark: native pico-decoder forward vs an equivalent LlamaForCausalLM on CPU, and the
number of learning-dynamics file reads when several metrics share one loaded step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_pico.py [--size tiny] [--seq 256] [--batch 4]

Prints median forward times and the ratio native / Llama (target <= 1.2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from harness import learning_dynamics as ld
    from harness_plugins.models.pico.convert import pico_to_llama
    from harness_plugins.models.pico.modeling import PicoDecoderForCausalLM, pico_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pico = PicoDecoderForCausalLM(pico_config(args.size)).eval()
    llama = pico_to_llama(pico)
    ids = torch.randint(0, pico.config.vocab_size, (args.batch, args.seq))
    with torch.inference_mode():
        diff = (pico(ids).logits - llama(ids).logits).abs().max().item()
        # interleave the two so machine load drifts hit both alike
        tp, tl = [], []
        for _ in range(3):
            tp.append(timeit(lambda: pico(ids), args.repeats))
            tl.append(timeit(lambda: llama(ids), args.repeats))
    t_p, t_l = min(tp), min(tl)
    print(f"pico-decoder-{args.size} forward B={args.batch} S={args.seq}: native {t_p * 1e3:.1f} ms, "
          f"LlamaForCausalLM {t_l * 1e3:.1f} ms, ratio {t_p / t_l:.2f} (target <= 1.2); max |dlogits| {diff:.1e}")

    # learning dynamics: three metrics reading overlapping fields of one step
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        data = {k: {f"_forward_module.layers.{i}.attention.v_proj": torch.randn(64, 32, generator=g) for i in range(12)}
                for k in ld.KINDS}
        for split in ld.SPLITS:
            ld.write(tmp, 0, split, data)
        step = ld.StepDynamics(ld.learning_dynamics_dir(tmp, 0), batch_size=16)
        for _metric in range(3):
            for split in ld.SPLITS:
                for kind in ld.KINDS:
                    step.get(split, kind)
        print(f"learning dynamics: {sum(step.reads.values())} file reads for 3 metrics x 6 files "
              f"(one per file: {all(v == 1 for v in step.reads.values())})")


if __name__ == "__main__":
    main()
