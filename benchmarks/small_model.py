"""A small model's whole training step: gradguard against torch's best, per optimizer and clip.

The main job's model (``digits``: a 12-layer tanh MLP, 46k parameters in 24 tensors) trains
for 800 steps of forward, backward, clip and step on one thread, once with gradguard's
optimizer and ``clip=`` each of ``none``, ``global_norm:1``, ``agc:0.05`` and ``zclip:2.5``, and
once with torch's best: ``clip_grad_norm_(foreach=True)`` (none for ``none``) and the fastest
form of the optimizer (``fused=True`` where torch has it, ``foreach=True`` otherwise;
pytorch-optimizer's LARS, LAMB and Lion, ``pip install -r requirements/bench.txt``). torch has
no AGC or ZClip: their reference is the global-norm clip, the cheapest clip torch offers.

The two runs of a pair advance in blocks of 100 steps, interleaved, the order alternating, in
one process; a run's time is the sum of its blocks. With ``--reps N`` every pair runs N times
and the table shows the median ratio.

    .venv/bin/python benchmarks/small_model.py [--reps 3] [--optimizers adam,nadam]
                                               [--clips none,global_norm:1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from gradguard import optim
from gradguard.bench import torch_optimizer
from gradguard.optim import REGISTRY
from gradguard.tasks import get

CLIPS = ("none", "global_norm:1", "agc:0.05", "zclip:2.5")
STEPS = 800
BLOCK = 100
BATCH = 64


def runner(make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
           torch_clip: bool, seed: int) -> Callable[[int, int], None]:
    """A training run: ``run(start, n)`` takes steps ``start .. start+n-1``."""
    task = get("digits")
    torch.manual_seed(seed)
    model = task.build_model()
    params = list(model.parameters())
    opt = make_opt(params)
    x, y = task.train
    g = torch.Generator().manual_seed(seed)
    batches = torch.randint(0, len(y), (STEPS, BATCH), generator=g)

    def run(start: int, n: int) -> None:
        for i in range(start, start + n):
            idx = batches[i]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if torch_clip:
                nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()

    return run


def pair(name: str, clip: str, seed: int) -> tuple[float, float] | None:
    """(gradguard seconds, torch seconds) for one 800-step run each; None without a
    reference."""
    entry = REGISTRY[name]
    kwargs = {**entry.kwargs, **(entry.bench or {"lr": entry.lrs[len(entry.lrs) // 2]})}
    ours = runner(lambda ps: entry.cls(ps, clip=None if clip == "none" else clip, **kwargs),
                  False, seed)
    ref_opt, _ = torch_optimizer(entry.cls.__name__, [nn.Parameter(torch.zeros(1))], kwargs)
    if ref_opt is None:
        return None
    theirs = runner(lambda ps: torch_optimizer(entry.cls.__name__, ps, kwargs)[0],  # type: ignore[return-value,arg-type]
                    clip != "none", seed)
    times = {"gradguard": 0.0, "torch": 0.0}
    runs = {"gradguard": ours, "torch": theirs}
    for b, start in enumerate(range(0, STEPS, BLOCK)):
        order = ["gradguard", "torch"] if b % 2 == 0 else ["torch", "gradguard"]
        for k in order:
            t0 = time.perf_counter()
            runs[k](start, BLOCK)
            times[k] += time.perf_counter() - t0
    return times["gradguard"], times["torch"]


def reference(name: str) -> str:
    entry = REGISTRY[name]
    kwargs = {**entry.kwargs, **(entry.bench or {"lr": 0.01})}
    _, what = torch_optimizer(entry.cls.__name__, [nn.Parameter(torch.zeros(1))], kwargs)
    return what


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--optimizers", default=",".join(n for n, e in REGISTRY.items()
                                                     if e.bench is not None))
    ap.add_argument("--clips", default=",".join(CLIPS))
    a = ap.parse_args()
    names = a.optimizers.split(",")
    clips = a.clips.split(",")
    for n in names:
        if n not in REGISTRY:
            ap.error(f"invalid --optimizers entry {n!r}; valid choices: {', '.join(REGISTRY)}")
    for c in clips:
        if c != "none":
            optim.Adam([nn.Parameter(torch.zeros(1))], clip=c)  # raises on a bad spec
    if a.reps < 1:
        ap.error(f"invalid --reps {a.reps}; must be >= 1")
    torch.set_num_threads(1)
    print(f"digits, {STEPS} steps of batch {BATCH}, one thread; ratio = gradguard / torch "
          f"(median of {a.reps}); in brackets the seconds of gradguard / torch\n", flush=True)
    print("| optimizer | " + " | ".join(clips) + " |")
    print("|---|" + "---|" * len(clips))
    worst = 0.0
    for n in names:
        cells = []
        for c in clips:
            got = [pair(n, c, seed) for seed in range(a.reps)]
            if got[0] is None:
                cells.append("n/a")
                continue
            ratios = [o / t for o, t in got if t > 0]  # type: ignore[misc]
            r = statistics.median(ratios)
            worst = max(worst, r)
            o, t = got[len(got) // 2]  # type: ignore[misc]
            cells.append(f"{r:.2f}x ({o:.2f}/{t:.2f})")
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nworst ratio: {worst:.2f}x")
    print("references: " + "; ".join(f"{n}: {reference(n)}" for n in names))


if __name__ == "__main__":
    main()
