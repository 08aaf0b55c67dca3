"""A whole training step (zero_grad, forward, backward, clip, step) under ``torch.compile``
against the same step in eager mode, for gradguard's AdamW (``clip="global_norm:1"``) and for
torch's (``clip_grad_norm_`` + ``AdamW(fused=True)``), on the ``digits`` task's MLP (46k
parameters) or ``gradguard.bench.TinyLM`` (an 18M-parameter transformer LM, ``--model lm``).

Every variant's LR follows a cosine schedule, stepped after each step (``--no-schedule``: a
constant LR); torch's step guards on the LR's value when compiled, gradguard's is not traced.
The four variants run interleaved, one step each per round, in a rotating order, after a
warm-up that compiles; the table has the median ms per step, each variant's ratio to torch
eager, and how many frames dynamo compiled (``torch._dynamo.testing.CompileCounter`` wrapping
inductor) and recompiled after the warm-up.

    .venv/bin/python benchmarks/compiled_step.py [--model digits|lm] [--reps 200]
                                                 [--no-schedule]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo
from torch import nn

import gradguard
from gradguard.bench import TinyLM, interleaved


class Counting:
    """A dynamo backend that counts the frames it is handed and compiles them with
    inductor."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, gm: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        from torch._inductor.compile_fx import compile_fx

        self.frames += 1
        return compile_fx(gm, inputs)


def variant(kind: str, compiled: bool, model_name: str, schedule_steps: int | None
            ) -> tuple[Callable[[], float], Counting | None]:
    torch.manual_seed(0)
    if model_name == "lm":
        model: nn.Module = TinyLM()
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, 32_000, (2, 32), generator=g)
        y = torch.randint(0, 32_000, (2, 32), generator=g)

        def loss_of() -> torch.Tensor:
            out = model(x)
            return nn.functional.cross_entropy(out.view(-1, out.shape[-1]), y.view(-1))
    else:
        task = gradguard.tasks.get("digits")
        model = task.build_model()
        xs, ys = task.train
        x, y = xs[:64], ys[:64]

        def loss_of() -> torch.Tensor:
            return nn.functional.cross_entropy(model(x), y)

    params = list(model.parameters())
    if kind == "torch":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
    else:
        opt = gradguard.AdamW(params, lr=1e-3, clip="global_norm:1")

    def step() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        if kind == "torch":
            nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        return loss

    counter = Counting() if compiled else None
    run = torch.compile(step, backend=counter) if counter is not None else step
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, schedule_steps)
             if schedule_steps else None)

    def timed() -> float:
        t0 = time.perf_counter()
        run()
        if sched is not None:
            sched.step()
        return time.perf_counter() - t0

    return timed, counter


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", choices=("digits", "lm"), default="digits")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-schedule", action="store_true", help="a constant LR")
    a = ap.parse_args()
    if a.reps < 1 or a.warmup < 1:
        ap.error(f"invalid --reps {a.reps} / --warmup {a.warmup}; both must be >= 1")
    torch.set_num_threads(1 if a.model == "digits" else torch.get_num_threads())
    names = {("torch", False): "torch eager", ("torch", True): "torch compiled",
             ("gradguard", False): "gradguard eager", ("gradguard", True): "gradguard compiled"}
    runs: dict[str, Callable[[], float]] = {}
    counters: dict[str, Counting | None] = {}
    warm: dict[str, int] = {}
    for (kind, compiled), label in names.items():
        fn, counter = variant(kind, compiled, a.model,
                              None if a.no_schedule else a.reps + a.warmup)
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            fn()
        print(f"  {label}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
        runs[label], counters[label] = fn, counter
        warm[label] = counter.frames if counter is not None else 0
    times = interleaved(runs, a.reps)
    base = statistics.median(times["torch eager"])
    print(f"\n{a.model}, {a.reps} interleaved rounds after {a.warmup} warm-up steps; "
          f"{'constant LR' if a.no_schedule else 'cosine LR schedule'}; "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| variant | ms / step | vs torch eager | frames compiled | recompiled after warm-up |")
    print("|---|---|---|---|---|")
    for label in names.values():
        med = statistics.median(times[label])
        c = counters[label]
        frames = "-" if c is None else str(warm[label])
        again = "-" if c is None else str(c.frames - warm[label])
        print(f"| {label} | {med * 1e3:.3f} | {med / base:.2f}x | {frames} | {again} |")


if __name__ == "__main__":
    main()
