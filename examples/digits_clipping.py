"""Train a deep MLP on scikit-learn's digits with gradguard's Adam, with and without clipping.

A deliberately hard-to-train model (12 tanh layers, no normalization) on real data that ships
with scikit-learn: 1,797 8x8 images of handwritten digits, split 75/25 (the ``digits`` task of
``gradguard compare``, trained here with a plain loop to show the Python API). Every setting trains
with the same seeds; the table shows test accuracy (mean and worst over seeds), the share of
steps that clipping changed, and the steps the non-finite guard skipped.

    python examples/digits_clipping.py --steps 400 --seeds 3
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch import nn

import gradguard

CLIPS = ["none", "global_norm:1", "zclip:2.5", "agc:0.05", "auto:10"]


def load_data() -> tuple[torch.Tensor, ...]:
    """The ``digits`` task's split (the same data ``gradguard compare`` uses)."""
    task = gradguard.tasks.get("digits")
    return (*task.train, *task.val)


def make_model() -> nn.Module:
    """The ``digits`` task's 12-layer tanh MLP."""
    return gradguard.tasks.get("digits").build_model()


def train(clip: str, lr: float, steps: int, seed: int, data: tuple[torch.Tensor, ...],
          batch: int = 64) -> dict[str, float]:
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = make_model()
    opt = gradguard.Adam(model.parameters(), lr=lr, clip=clip)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, len(x_tr), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_tr[idx]), y_tr[idx])
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    return {"acc": acc, "loss": loss.item(), "clip_rate": opt.clipped_steps.item() / steps,
            "skipped": float(opt.skipped_steps.item())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="training steps per run (400)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per setting (3)")
    ap.add_argument("--lrs", default="1e-3,3e-3", help="comma-separated Adam learning rates")
    ap.add_argument("--clips", default=",".join(CLIPS), help="comma-separated clip specs")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.seeds < 1:
        ap.error(f"--steps and --seeds must be >= 1, got {args.steps} and {args.seeds}")
    try:
        lrs = [float(s) for s in args.lrs.split(",")]
        clips = [gradguard.clip.parse(c).spec for c in args.clips.split(",")]
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(1)
    data = load_data()
    print(f"digits: {len(data[0])} train / {len(data[2])} test images, 12-layer tanh MLP, "
          f"Adam, {args.steps} steps, {args.seeds} seeds")
    rows = []
    total = len(lrs) * len(clips) * args.seeds
    done = 0
    start = time.perf_counter()
    for lr in lrs:
        for clip in clips:
            runs = []
            for seed in range(args.seeds):
                runs.append(train(clip, lr, args.steps, seed, data))
                done += 1
                print(f"\r  [{done}/{total}] lr={lr:g} clip={clip} seed={seed}   ", end="",
                      file=sys.stderr, flush=True)
            accs = [r["acc"] for r in runs]
            rows.append((lr, clip, sum(accs) / len(accs), min(accs),
                         sum(r["clip_rate"] for r in runs) / len(runs),
                         sum(r["skipped"] for r in runs),
                         sum(r["loss"] for r in runs) / len(runs)))
    print(f"\r  {total} runs in {time.perf_counter() - start:.0f} s" + " " * 40, file=sys.stderr)
    print()
    print("| lr | clip | test acc (mean) | test acc (worst) | steps clipped | skipped | "
          "final train loss |")
    print("|---|---|---|---|---|---|---|")
    for lr, clip, mean, worst, rate, skipped, loss in rows:
        loss_s = f"{loss:.3f}" if math.isfinite(loss) else "nan"
        print(f"| {lr:g} | {clip} | {mean:.3f} | {worst:.3f} | {rate:.0%} | {skipped:.0f} | "
              f"{loss_s} |")
    best = max(rows, key=lambda r: r[2])
    print(f"\nbest: lr={best[0]:g} clip={best[1]} (mean test accuracy {best[2]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
