"""Time of the first (compiling) step of a compiled-backend optimizer in a fresh process.

Run it twice: the first run after a change compiles cold; later runs load the kernels from
torch's on-disk compile cache (TORCHINDUCTOR_CACHE_DIR).

    python benchmarks/first_step.py rmsprop
"""

from __future__ import annotations

import sys
import time

import torch

import gradguard
from gradguard.bench import make_params, transformer_shapes

NAMES = {"rmsprop": "RMSprop", "nadam": "NAdam", "adamax": "Adamax", "adadelta": "Adadelta",
         "lion": "Lion", "lars": "LARS", "lamb": "LAMB", "adamw": "AdamW"}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "rmsprop"
    if name not in NAMES:
        raise SystemExit(f"unknown optimizer {name!r}; valid: {', '.join(NAMES)}")
    params = make_params(transformer_shapes(25e6), 0)
    opt = getattr(gradguard, NAMES[name])(params, clip="global_norm:1.0", backend="compiled")
    t0 = time.perf_counter()
    opt.step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    opt.step()
    second = time.perf_counter() - t0
    print(f"{name}: first step {first:.2f} s, second step {second * 1e3:.1f} ms "
          f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
