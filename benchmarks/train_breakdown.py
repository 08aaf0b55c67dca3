"""Where the time of a training step goes: zero_grad, forward, backward (with gradguard's
norm hooks) and clip + step, for torch's fused AdamW with and without ``clip_grad_norm_`` and
for gradguard's AdamW with and without clipping, on ``gradguard.bench.TinyLM``. The variants
run interleaved in a rotating order in one process; medians per phase.

    .venv/bin/python benchmarks/train_breakdown.py [--reps 25] [--keep-grads] [--default-malloc]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from gradguard.bench import TRAINING_VARIANTS, interleaved, steady_allocator, training_variant

PHASES = ("zero_grad", "forward", "backward", "clip + step", "total")


def make(kind: str, set_to_none: bool) -> Callable[[], list[float]]:
    model, opt = training_variant(kind)
    params = list(model.parameters())
    data = torch.randint(0, 32_000, (2, 32), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 32_000, (2, 32), generator=torch.Generator().manual_seed(2))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> list[float]:
        t = [time.perf_counter()]
        opt.zero_grad(set_to_none=set_to_none)
        t.append(time.perf_counter())
        out = model(data)
        loss = loss_fn(out.view(-1, out.shape[-1]), target.view(-1))
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        if kind == "torch_clip":
            nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        t.append(time.perf_counter())
        return [b - a for a, b in itertools.pairwise(t)] + [t[-1] - t[0]]

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--keep-grads", action="store_true",
                    help="zero_grad(set_to_none=False) instead of torch's default")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (see gradguard.bench)")
    a = ap.parse_args()
    if a.reps < 1:
        ap.error(f"invalid --reps {a.reps}; must be >= 1")
    steady = not a.default_malloc and steady_allocator()
    fns = {k: make(k, not a.keep_grads) for k in TRAINING_VARIANTS}
    for fn in fns.values():
        fn()
        fn()
    times = interleaved(fns, a.reps)
    med = {k: [statistics.median(col) * 1e3 for col in zip(*v, strict=True)]
           for k, v in times.items()}
    mode = "zero_grad(set_to_none=False)" if a.keep_grads else "zero_grad()"
    print(f"TinyLM, AdamW, {mode}, malloc {'steady' if steady else 'as is'}, "
          f"medians of {a.reps} (ms; in brackets: minus torch without clipping)\n")
    print("| variant | " + " | ".join(PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    base = med["torch_step"]
    for k, row in med.items():
        cells = [f"{v:.2f}" if k == "torch_step" else f"{v:.2f} ({v - b:+.2f})"
                 for v, b in zip(row, base, strict=True)]
        print(f"| {TRAINING_VARIANTS[k]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
