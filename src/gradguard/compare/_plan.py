"""How big a piece of work is before it starts: the measured pace of a task's training step,
what a sweep or a range test will take at that pace, and the sizes called absurd.

A command states its plan (runs, steps, the time they take here) before it starts, and refuses
a plan past :data:`LIMITS` unless the user insists (``--insist``). Sizes that cannot be held in
memory at all (:data:`HARD_LIMITS`) are refused even then.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..tasks import Task, batches
from ._grid import make_optimizer

__all__ = ["HARD_LIMITS", "LIMITS", "Pace", "duration", "measure_pace"]

#: past these a command asks for ``--insist``
LIMITS = {"runs": 10_000, "seconds": 24 * 3600.0}
#: past these nothing runs: the plan itself (sweep.json lists every run; a record holds a
#: number per step) would not fit in memory
HARD_LIMITS = {"runs": 1_000_000, "steps": 10_000_000, "batch_size": 1_000_000}


@dataclass(frozen=True)
class Pace:
    """Seconds per training step and per evaluation of a task's model, measured here on one
    thread (as each sweep worker runs)."""

    step: float
    evaluation: float

    def run_seconds(self, steps: int, eval_every: int) -> float:
        """One run of ``steps`` steps evaluated every ``eval_every`` steps (and at 0)."""
        return steps * self.step + (math.ceil(steps / eval_every) + 1) * self.evaluation


def measure_pace(task: Task, optimizer: str, lr: float, clip: str, batch_size: int,
                 steps: int = 8, budget: float = 1.0) -> Pace:
    """Time ``task``'s training step (``optimizer`` with ``clip`` at ``lr``, ``batch_size``
    rows) and its evaluation on one thread: a warm-up step, then up to ``steps`` steps or
    ``budget`` seconds, whichever ends first. Errors of the step itself (a batch too large
    for memory) propagate: the caller turns them into a message."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = task.build_model()
        opt = make_optimizer(optimizer, model.parameters(), lr, clip)
        draw = batches(task, torch.Generator().manual_seed(0), batch_size)

        def step() -> None:
            x, y = draw()
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(x), y).backward()
            opt.step()

        step()
        start, n = time.perf_counter(), 0
        while n < steps and time.perf_counter() - start < budget:
            step()
            n += 1
        per_step = (time.perf_counter() - start) / max(n, 1)
        start = time.perf_counter()
        task.evaluate(model)
        per_eval = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return Pace(per_step, per_eval)


def duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3.5 h``, ``40 days``.

    >>> duration(45), duration(720), duration(12600), duration(3.5e6)
    ('45 s', '12 min', '3.5 h', '41 days')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 365 * 86400 * 100:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365 * 86400):.2g} years"
