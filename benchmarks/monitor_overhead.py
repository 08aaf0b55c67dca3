"""Overhead of gradguard.Monitor at interval 10: one model trained with and one without a
monitor, in the same process, in interleaved blocks of 50 steps; medians of the per-step time.

    .venv/bin/python benchmarks/monitor_overhead.py [--width 1024] [--depth 4] [--batch 256]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import gradguard
from gradguard.monitor import Monitor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--block-steps", type=int, default=50)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    layers: list[nn.Module] = []
    for _ in range(a.depth):
        layers += [nn.Linear(a.width, a.width), nn.GELU()]
    base = nn.Sequential(*layers, nn.Linear(a.width, 10)).to(dev)
    x = torch.randn(a.batch, a.width, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def setup(monitored: bool, update_ratio: bool = True
              ) -> tuple[nn.Module, torch.optim.Optimizer, Monitor | None]:
        model = copy.deepcopy(base)
        opt = gradguard.Adam(model.parameters(), lr=1e-4, clip="global_norm:1")
        mon = (Monitor(model, opt, interval=a.interval, print_summary=False, warn=False,
                       keep_records=False, update_ratio=update_ratio) if monitored else None)
        return model, opt, mon

    runs = {"plain": setup(False), "monitor": setup(True),
            "monitor, update_ratio=False": setup(True, False)}
    times: dict[str, list[float]] = {k: [] for k in runs}

    def block(name: str) -> float:
        model, opt, _ = runs[name]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.block_steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / a.block_steps

    for name in runs:  # warm-up
        block(name)
    for i in range(a.blocks):
        order = list(runs)[i % len(runs):] + list(runs)[:i % len(runs)]
        for name in order:
            times[name].append(block(name))
    n_params = sum(p.numel() for p in base.parameters())
    med = {k: statistics.median(v) for k, v in times.items()}
    backend = runs["plain"][1].backend  # type: ignore[attr-defined]
    print(f"device {dev}, {n_params / 1e6:.2f}M parameters in {len(list(base.parameters()))} "
          f"tensors, batch {a.batch}, interval {a.interval}, backend {backend}")
    for k, v in med.items():
        print(f"{k:>28}: median {v * 1e3:.3f} ms/step over {a.blocks} blocks of "
              f"{a.block_steps} steps")
    for k in list(runs)[1:]:
        print(f"overhead ({k}): {(med[k] / med['plain'] - 1) * 100:+.2f}%")
        mon = runs[k][2]
        assert mon is not None
        mon.close()


if __name__ == "__main__":
    main()
