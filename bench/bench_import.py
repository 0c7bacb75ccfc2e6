"""`import harness` must be light: under 0.3 s and no torch.

    python bench/bench_import.py
"""

from __future__ import annotations

import subprocess
import sys

CODE = ("import time, sys; t = time.perf_counter(); import harness, harness.api, harness.registry; "
        "dt = time.perf_counter() - t; print(dt, 'torch' in sys.modules)")


def main(repeats: int = 7) -> None:
    times, torch_loaded = [], False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
        times.append(float(out[0]))
        torch_loaded |= out[1] == "True"
    print(f"import harness: min {min(times) * 1000:.1f} ms, median {sorted(times)[len(times) // 2] * 1000:.1f} ms "
          f"over {repeats} fresh interpreters (target < 300 ms); torch imported: {torch_loaded}")


if __name__ == "__main__":
    main()
