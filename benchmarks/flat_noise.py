"""How often the LR finder's divergence test fires on a loss that neither learns nor blows up.

A flat loss (a level times 1 + noise * N(0, 1), 300 steps) must never read as diverged: a
false divergence ends a sweep early and moves the suggestion. Prints the number of sweeps
that did, out of ``--sweeps``, at noise drawn from ``--noise LO,HI`` and smoothing ``--beta``.

    python benchmarks/flat_noise.py --sweeps 20000 --noise 0.15,0.2 --beta 0
"""

from __future__ import annotations

import argparse

import numpy as np

from gradguard.lr_finder import _divergence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=int, default=5000)
    ap.add_argument("--noise", default="0.15,0.2", help="LO,HI of the relative noise")
    ap.add_argument("--beta", type=float, default=0.0, help="the finder's smoothing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lo, hi = (float(x) for x in args.noise.split(","))
    draw = np.random.default_rng(args.seed)
    fired = []
    for _ in range(args.sweeps):
        seed = int(draw.integers(0, 2**32 - 1))
        level, noise = float(10 ** draw.uniform(-2, 2)), float(draw.uniform(lo, hi))
        rng = np.random.default_rng(seed)
        losses = list(level * (1 + noise * rng.standard_normal(300)).clip(0.05))
        step, reason = _divergence(losses, args.beta, 4.0)
        if step is not None:
            fired.append((seed, level, noise, step, reason))
    for seed, level, noise, step, reason in fired[:10]:
        print(f"seed={seed} level={level:.4g} noise={noise:.4f}: step {step}, {reason}")
    print(f"{len(fired)} of {args.sweeps} flat sweeps read as diverged "
          f"(noise {lo:g}-{hi:g}, beta {args.beta:g})")


if __name__ == "__main__":
    main()
