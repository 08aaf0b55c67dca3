"""What a sweep runs: optimizer names, learning-rate grids, and the grid of run configurations."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from ..clip import ClipPolicy
from ..clip import parse as parse_clip
from ..optim import REGISTRY, log_grid
from ..schedules import parse as parse_schedule

__all__ = ["DEFAULT_LRS", "OPTIMIZERS", "RunConfig", "expand", "log_grid", "make_optimizer",
           "parse_lrs", "parse_names"]

# name -> (class, keyword arguments, what it is) and name -> the LRs a sweep tries by default:
# views of the optimizer registry (gradguard.optim.REGISTRY), where each entry is declared
# beside its class.
OPTIMIZERS: dict[str, tuple[type[Optimizer], dict[str, Any], str]] = {
    name: (e.cls, dict(e.kwargs), e.description) for name, e in REGISTRY.items()}
DEFAULT_LRS: dict[str, tuple[float, ...]] = {name: e.lrs for name, e in REGISTRY.items()}


def parse_names(text: str, valid: Iterable[str], what: str) -> list[str]:
    """A comma-separated list of names, each one of ``valid``."""
    choices = list(valid)
    out = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not out:
        raise ValueError(f"Invalid {what}: {text!r} is empty; valid choices: "
                         f"{', '.join(choices)}")
    for name in out:
        if name not in choices:
            raise ValueError(f"Invalid {what}: {name!r}; valid choices: {', '.join(choices)}")
    return list(dict.fromkeys(out))


#: the most learning rates one --lr may give (a grid past it cannot be planned, let alone run)
MAX_LRS = 100_000


def parse_lrs(text: str) -> tuple[float, ...] | None:
    """A learning-rate grid: ``LO:HI:N`` (N log-spaced values from LO to HI), a comma-separated
    list, or ``auto`` (None: each optimizer's default range).

    >>> parse_lrs("1e-4:1:5")
    (0.0001, 0.001, 0.01, 0.1, 1.0)
    >>> parse_lrs("3e-3,1e-2")
    (0.003, 0.01)
    >>> parse_lrs("1e-3:1e-1")
    Traceback (most recent call last):
    ValueError: Invalid --lr: '1e-3:1e-1'; ...
    """
    usage = ("give LO:HI:N (N log-spaced learning rates from LO to HI, e.g. 1e-4:1:9), a "
             "comma-separated list (3e-4,1e-3), or auto (each optimizer's default range)")
    text = text.strip()
    if text.lower() == "auto":
        return None
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            if not (0 < lo <= hi and math.isfinite(hi)) or n < 1 or (n == 1 and lo != hi):
                raise ValueError
            if n > MAX_LRS:
                raise ValueError(f"Invalid --lr: {text!r}; {n:,} learning rates, more than "
                                 f"the {MAX_LRS:,} one sweep can hold; give fewer (e.g. "
                                 f"{parts[0]}:{parts[1]}:9)")
            grid = log_grid(lo, hi, n)
        else:
            if text.count(",") >= MAX_LRS:
                raise ValueError(f"Invalid --lr: a list of {text.count(',') + 1:,} learning "
                                 f"rates, more than the {MAX_LRS:,} one sweep can hold")
            grid = tuple(float(t) for t in text.split(",") if t.strip())
            if not grid or not all(v > 0 and math.isfinite(v) for v in grid):
                raise ValueError
    except ValueError as e:
        if str(e).startswith("Invalid --lr"):
            raise
        raise ValueError(f"Invalid --lr: {text!r}; {usage}") from None
    return tuple(sorted(set(grid)))


@dataclass(frozen=True)
class RunConfig:
    """One training run of a sweep."""

    task: str
    optimizer: str
    clip: str
    schedule: str
    lr: float
    seed: int
    steps: int
    batch_size: int
    eval_every: int

    @property
    def setting(self) -> tuple[str, str, str]:
        """What the report ranks: (optimizer, clip, schedule), across learning rates/seeds."""
        return (self.optimizer, self.clip, self.schedule)

    @property
    def run_id(self) -> str:
        """A file-name-safe id, the same for the same configuration in every sweep."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        digest = hashlib.sha1(blob).hexdigest()[:10]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in
                       f"{self.optimizer}-{self.clip}-{self.schedule}-lr{self.lr:g}-s{self.seed}")
        return f"{safe[:80]}-{digest}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand(task: str, optimizers: Sequence[str], clips: Sequence[str],
           schedules: Sequence[str], lrs: tuple[float, ...] | None, seeds: int, steps: int,
           batch_size: int, eval_every: int,
           task_lrs: dict[str, tuple[float, ...]] | None = None) -> list[RunConfig]:
    """Every combination, learning rates innermost-but-one and seeds innermost."""
    out = []
    for opt_name in optimizers:
        grid = lrs if lrs is not None else (task_lrs or {}).get(opt_name, DEFAULT_LRS[opt_name])
        for clip in clips:
            for sched in schedules:
                for lr in grid:
                    for seed in range(seeds):
                        out.append(RunConfig(task, opt_name, clip, sched, float(lr), seed,
                                             steps, batch_size, eval_every))
    return out


def canonical_clip(spec: str) -> str:
    """The clip spec as gradguard writes it (``global_norm:1`` -> ``global_norm:1.0``)."""
    policy: ClipPolicy = parse_clip(spec)
    return policy.spec


def check_schedule(spec: str, steps: int) -> str:
    """Raise ValueError if ``spec`` is not a schedule that can run for ``steps`` steps."""
    param = torch.nn.Parameter(torch.zeros(()))
    parse_schedule(spec, torch.optim.SGD([param], lr=1.0), steps)
    return spec.strip()


def make_optimizer(name: str, params: Iterable[Any], lr: float, clip: str) -> Optimizer:
    """The gradguard optimizer ``name`` (see :data:`OPTIMIZERS`) with ``clip``."""
    cls, kwargs, _ = OPTIMIZERS[name]
    return cls(params, lr=lr, clip=clip, **kwargs)  # type: ignore[call-arg]
