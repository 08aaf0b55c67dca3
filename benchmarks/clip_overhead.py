"""What each clip method costs per training step on a built-in task's model: gradguard's
optimizer with every clip spec, against torch's fused optimizer unclipped and with
``clip_grad_norm_``. Forward, backward and step on one batch; the variants run interleaved
in a rotating order in one process; medians.

    .venv/bin/python benchmarks/clip_overhead.py [--task digits] [--optimizer adam] [--reps 200]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

import gradguard
from gradguard import tasks
from gradguard.bench import interleaved_medians

CLIPS = ("none", "global_norm:1", "norm:1", "value:0.1", "agc:0.05", "zclip:2.5", "auto:10")
TORCH = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
         "adagrad": torch.optim.Adagrad}
GRADGUARD = {"adam": gradguard.Adam, "adamw": gradguard.AdamW, "sgd": gradguard.SGD,
             "adagrad": gradguard.Adagrad}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--task", default="digits", choices=tasks.names())
    ap.add_argument("--optimizer", default="adam", choices=sorted(TORCH))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    if a.reps < 1:
        ap.error(f"invalid --reps {a.reps}; must be >= 1")
    torch.set_num_threads(1)
    task = tasks.get(a.task)
    x, y = task.train
    xb, yb = x[:task.batch_size], y[:task.batch_size]

    def make(kind: str) -> Callable[[], None]:
        torch.manual_seed(0)
        model = task.build_model()
        params = list(model.parameters())
        if kind.startswith("torch"):
            opt: torch.optim.Optimizer = TORCH[a.optimizer](params, lr=a.lr, fused=True)
        else:
            clip = None if kind == "none" else kind
            opt = GRADGUARD[a.optimizer](params, lr=a.lr, clip=clip)

        def step() -> None:
            opt.zero_grad()
            task.loss_fn(model(xb), yb).backward()
            if kind == "torch+clip_grad_norm_":
                nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()

        return step

    kinds = ["torch", "torch+clip_grad_norm_", *CLIPS]
    fns = {k: make(k) for k in kinds}
    for fn in fns.values():
        for _ in range(5):
            fn()
    med = {k: v * 1e3 for k, v in interleaved_medians(fns, a.reps).items()}
    n = sum(p.numel() for p in task.build_model().parameters())
    print(f"{a.task} ({n:,} parameters, batch {task.batch_size}), {a.optimizer}, one thread, "
          f"medians of {a.reps} training steps\n")
    print("| variant | ms / step | vs torch unclipped |")
    print("|---|---|---|")
    for k in kinds:
        name = k if k.startswith("torch") else f"gradguard, clip {k}"
        print(f"| {name} | {med[k]:.3f} | {med[k] / med['torch']:.2f}x |")


if __name__ == "__main__":
    main()
