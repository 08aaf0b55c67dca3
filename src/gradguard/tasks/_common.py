"""Small pieces the built-in tasks share."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def accuracy(out: Tensor, y: Tensor) -> float:
    """Share of rows whose arg-max logit is the label."""
    return float((out.argmax(-1) == y).float().mean())


def need(module: str, task: str) -> Any:
    """Import ``module`` or raise an error that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"task {task!r} needs {module.split('.')[0]}: "
                          "pip install 'gradguard[tasks]'") from e


def split(n: int, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed random split of ``range(n)`` into (train, val) indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:], perm[:n_val]
